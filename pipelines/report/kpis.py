"""The lake's KPIs, one function per report section, as DuckDB SQL over the parquet files.

Time: every timestamp is UTC and compared as a naive UTC ``TIMESTAMP``; only events
strictly before the report's ``as_of`` count. The months are ``model.Grid``.

Customers are counted in *spells*: a spell is a stretch of time a customer is active.

* transactional (no subscriptions table): an order at ``t`` keeps its customer active on
  ``(t, t + W days]``, the churn model's rule "no order within W days = lost";
* subscription: a subscription is active on ``(started_at, ended_at]`` (the churn
  population's rule, features/labels.py), open-ended while it has no end.

Overlapping or touching intervals of one customer merge into one spell (a plan change
or a reorder within W days is not a loss). A spell's start is a *new* customer (their
first spell) or a *resurrected* one (a later spell); its end, when before ``as_of``, is
a *lost* customer. So for every month: active at the end = active at the start + new +
resurrected − lost, which the tests check.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from crmdata.contract import (
    CUSTOMERS,
    INTERACTIONS,
    LEAD_ACTIVITIES,
    LEADS,
    ORDERS,
    SUBSCRIPTIONS,
    InteractionType,
    LeadActivityType,
    Table,
)
from crmdata.lake import table_path
from pipelines.report.model import Grid, Mode, Section

log = logging.getLogger(__name__)

#: Funnel stages in order; a lead *reached* a stage when it has that stage's event or any later one.
FUNNEL_STAGES: tuple[str, ...] = ("created", "engaged", "demo_requested", "meeting", "converted")
#: NPS (0–10) buckets and the CSAT (1–5) answers that count as satisfied.
PROMOTER_MIN, PASSIVE_MIN = 9.0, 7.0
CSAT_SATISFIED_MIN = 4.0
#: Outbound touches are not a customer doing something (dormant counts in subscription mode).
OUTBOUND = (InteractionType.EMAIL_SENT.value,)


def _naive(value: datetime) -> datetime:
    """A UTC datetime as the naive one DuckDB's TIMESTAMP compares against."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


#: The tables the report reads, with the event time that says whether a row is before as_of
#: (a subscription started before as_of counts even if it ended after: its end is then unknown).
EVENT_TIME: dict[str, tuple[Table, str]] = {
    CUSTOMERS.name: (CUSTOMERS, "signup_at"), ORDERS.name: (ORDERS, "ordered_at"),
    SUBSCRIPTIONS.name: (SUBSCRIPTIONS, "started_at"), INTERACTIONS.name: (INTERACTIONS, "occurred_at"),
    LEADS.name: (LEADS, "created_at"), LEAD_ACTIVITIES.name: (LEAD_ACTIVITIES, "occurred_at"),
}


class LakeSQL:
    """A DuckDB connection with one view per lake table present, timestamps as naive UTC,
    restricted to rows before ``as_of`` where a table has an event time."""

    def __init__(self, lake: Path, grid: Grid, threads: int | None = None) -> None:
        self.lake, self.grid = lake, grid
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.present: set[str] = set()
        as_of = _naive(grid.as_of)
        for name, (table, column) in EVENT_TIME.items():
            path = table_path(lake, name)
            if not path.exists():
                continue
            self.present.add(name)
            casts = ", ".join(
                f"CAST({c} AS TIMESTAMP) AS {c}" if c in table.timestamp_columns else c
                for c in table.column_names if c not in table.pii_columns and c in self._columns(path))
            self.con.execute(f"CREATE VIEW {name} AS SELECT {casts} FROM read_parquet('{_sql_path(path)}') "
                             f"WHERE CAST({column} AS TIMESTAMP) < TIMESTAMP '{as_of:%Y-%m-%d %H:%M:%S.%f}'")
        months = pl.DataFrame({"idx": list(range(len(grid.starts))),
                               "month": grid.labels,
                               "ms": [_naive(s) for s in grid.starts],
                               "me": [_naive(e) for e in grid.ends]})
        self.con.register("months_df", months.to_arrow())
        self.con.execute("CREATE TEMP TABLE months AS SELECT idx, month, CAST(ms AS TIMESTAMP) AS ms, "
                         "CAST(me AS TIMESTAMP) AS me FROM months_df")
        # Boundaries: 0 = the first month's start, j + 1 = month j's end (= month j + 1's start).
        self.con.execute("CREATE TEMP TABLE points AS SELECT 0 AS pidx, ms AS t FROM months WHERE idx = 0 "
                         "UNION ALL SELECT idx + 1 AS pidx, me AS t FROM months")
        # The month index of a timestamp: calendar arithmetic, no join (-1 = before the first month).
        first = grid.first
        self.con.execute(f"CREATE MACRO midx(t) AS (year(t) - {first.year}) * 12 + month(t) - {first.month}")
        self.as_of = as_of

    def _columns(self, path: Path) -> set[str]:
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)

    def has(self, name: str) -> bool:
        return name in self.present

    def frame(self, sql: str) -> pl.DataFrame:
        return pl.from_arrow(self.con.sql(sql).to_arrow_table())  # type: ignore[return-value]

    def close(self) -> None:
        self.con.close()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def lake_mode(sql: LakeSQL) -> Mode | None:
    """Subscription when the lake has subscriptions (like the churn model's ``auto``)."""
    if sql.has(SUBSCRIPTIONS.name):
        return "subscription"
    if sql.has(ORDERS.name):
        return "transactional"
    return None


def build_spells(sql: LakeSQL, mode: Mode, window_days: int) -> None:
    """Temp tables ``intervals`` (customer_id, s, spell: the spell each order / subscription
    belongs to), ``spells`` (customer_id, spell (1 = first), s, e: null while still active at
    as_of) and ``active_points`` (customer_id, pidx: active at boundary ``pidx`` of ``points``,
    0 = the first month's start, j + 1 = month j's end)."""
    as_of = f"TIMESTAMP '{sql.as_of:%Y-%m-%d %H:%M:%S.%f}'"
    if mode == "subscription":
        source = "SELECT customer_id, started_at AS s, ended_at AS e FROM subscriptions"
    else:
        source = (f"SELECT customer_id, ordered_at AS s, ordered_at + INTERVAL {int(window_days)} DAY AS e "
                  "FROM orders")
    sql.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE intervals AS
        WITH iv AS (
            SELECT customer_id, s, CASE WHEN e IS NULL OR e >= {as_of} THEN NULL ELSE e END AS e FROM ({source})
        ), running AS (
            SELECT *, max(coalesce(e, TIMESTAMP '9999-12-31')) OVER (
                PARTITION BY customer_id ORDER BY s, e NULLS LAST
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
            FROM iv
        )
        SELECT customer_id, s, e, CAST(sum(CASE WHEN prev_end IS NULL OR s > prev_end THEN 1 ELSE 0 END) OVER (
                PARTITION BY customer_id ORDER BY s, e NULLS LAST ROWS UNBOUNDED PRECEDING) AS INTEGER) AS spell
        FROM running
    """)
    sql.con.execute("""
        CREATE OR REPLACE TEMP TABLE spells AS
        SELECT customer_id, spell, min(s) AS s, CASE WHEN bool_or(e IS NULL) THEN NULL ELSE max(e) END AS e
        FROM intervals GROUP BY customer_id, spell
    """)
    # A range join of every spell with the report's 13 boundaries (12 months): at most 13 rows a spell.
    sql.con.execute("""
        CREATE OR REPLACE TEMP TABLE active_points AS
        SELECT DISTINCT p.customer_id, t.pidx FROM spells p
        JOIN points t ON p.s < t.t AND coalesce(p.e, TIMESTAMP '9999-12-31') >= t.t
    """)


def customers_section(sql: LakeSQL, window_days: int) -> Section:
    section = Section(key="customers", title="Customers per month")
    mode = lake_mode(sql)
    section.definitions = _customer_definitions(mode, window_days)
    if mode is None:
        section.available = False
        section.notes.append("the lake has neither orders nor subscriptions: no customer is ever active")
        return section
    build_spells(sql, mode, window_days)
    n = len(sql.grid.starts)
    per_month: dict[str, str] = {
        "new": "SELECT midx(s) AS idx, count(*) AS v FROM spells WHERE spell = 1 GROUP BY ALL",
        "resurrected": "SELECT midx(s) AS idx, count(*) AS v FROM spells WHERE spell > 1 GROUP BY ALL",
        "lost": "SELECT midx(e) AS idx, count(*) AS v FROM spells WHERE e IS NOT NULL GROUP BY ALL",
        "active_at_start": "SELECT pidx AS idx, count(*) AS v FROM active_points GROUP BY ALL",
        "active_at_end": "SELECT pidx - 1 AS idx, count(*) AS v FROM active_points GROUP BY ALL",
    }
    if sql.has(CUSTOMERS.name):
        per_month["signups"] = "SELECT midx(signup_at) AS idx, count(*) AS v FROM customers GROUP BY ALL"
    else:
        section.notes.append("signups: the lake has no customers table")
    if mode == "transactional":
        # Customers who ordered in the month, in a spell that had started before it.
        per_month["returning"] = """
            SELECT midx(i.s) AS idx, count(DISTINCT i.customer_id) AS v FROM intervals i
            JOIN spells p ON p.customer_id = i.customer_id AND p.spell = i.spell
            JOIN months m ON m.idx = midx(i.s) AND p.s < m.ms GROUP BY ALL"""
        touched = "SELECT customer_id, ordered_at AS t FROM orders"
    else:
        per_month["returning"] = """
            SELECT a.pidx AS idx, count(*) AS v FROM active_points a
            JOIN active_points b ON b.customer_id = a.customer_id AND b.pidx = a.pidx + 1 GROUP BY ALL"""
        parts = []
        if sql.has(ORDERS.name):
            parts.append("SELECT customer_id, ordered_at AS t FROM orders")
        if sql.has(INTERACTIONS.name):
            outbound = ", ".join(f"'{t}'" for t in OUTBOUND)
            parts.append(f"SELECT customer_id, occurred_at AS t FROM interactions WHERE type NOT IN ({outbound})")
        touched = " UNION ALL ".join(parts)
    if touched:
        per_month["dormant"] = f"""
            WITH touched AS (SELECT DISTINCT customer_id, midx(t) AS idx FROM ({touched}) WHERE t >= {_ts(sql.grid.first)})
            SELECT a.pidx - 1 AS idx, count(*) AS v FROM active_points a
            ANTI JOIN touched x ON x.customer_id = a.customer_id AND x.idx = a.pidx - 1
            WHERE a.pidx > 0 GROUP BY ALL"""
    else:
        section.notes.append("dormant: the lake has no orders or interactions to see who did nothing")
    if mode == "subscription":
        per_month["subscriptions_ended"] = ("SELECT midx(ended_at) AS idx, count(*) AS v FROM subscriptions "
                                            "WHERE ended_at IS NOT NULL GROUP BY ALL")
        per_month["subscriptions_active_at_start"] = """
            SELECT t.pidx AS idx, count(*) AS v FROM subscriptions x
            JOIN points t ON x.started_at < t.t AND coalesce(x.ended_at, TIMESTAMP '9999-12-31') >= t.t
            GROUP BY ALL"""
    order = ["signups", "new", "returning", "resurrected", "dormant", "lost", "active_at_start", "active_at_end",
             "subscriptions_ended", "subscriptions_active_at_start"]
    frame = pl.DataFrame({"month": sql.grid.labels})
    for name in order:
        if name not in per_month:
            if name in ("signups", "dormant"):
                frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias(name))
            continue
        counts = dict(sql.frame(f"SELECT idx, v FROM ({per_month[name]}) WHERE idx >= 0 AND idx < {n}").iter_rows())
        frame = frame.with_columns(pl.Series(name, [int(counts.get(i, 0)) for i in range(n)], dtype=pl.Int64))
    frame = frame.with_columns(
        (pl.col("lost") / pl.col("active_at_start")).fill_nan(None).alias("customer_churn_rate"))
    if mode == "subscription":
        frame = frame.with_columns((pl.col("subscriptions_ended") / pl.col("subscriptions_active_at_start"))
                                   .fill_nan(None).alias("churn_rate"))
    else:
        frame = frame.with_columns(pl.col("customer_churn_rate").alias("churn_rate"))
    section.tables["monthly"] = frame.to_dicts()
    section.tables["retention"] = retention_matrix(sql).to_dicts()
    last = frame.row(-1, named=True)
    section.summary = {"mode": mode, "active_customers": last["active_at_end"],
                       "new_in_last_month": last["new"], "lost_in_last_month": last["lost"],
                       "churn_rate_last_month": last["churn_rate"]}
    return section


def retention_matrix(sql: LakeSQL) -> pl.DataFrame:
    """One row per cohort month (the month of a customer's first spell, within the report),
    its size, and ``m0``, ``m1`` … : the share of the cohort active at the end of the month
    that many months later (null for months not reached by ``as_of``)."""
    n = len(sql.grid.starts)
    counts = sql.frame(f"""
        WITH cohorts AS (SELECT customer_id, midx(s) AS cohort FROM spells WHERE spell = 1 AND s >= {_ts(sql.grid.first)})
        SELECT c.cohort, a.pidx - 1 - c.cohort AS k, count(*) AS active
        FROM cohorts c JOIN active_points a ON a.customer_id = c.customer_id AND a.pidx - 1 >= c.cohort
        GROUP BY ALL
    """)
    sizes = sql.frame(f"""
        SELECT midx(s) AS cohort, count(*) AS customers FROM spells
        WHERE spell = 1 AND s >= {_ts(sql.grid.first)} GROUP BY ALL
    """)
    size = dict(sizes.iter_rows())
    cells = {(c, k): v for c, k, v in counts.iter_rows()}
    rows = []
    for c, month in enumerate(sql.grid.labels):
        total = int(size.get(c, 0))
        row: dict[str, object] = {"month": month, "customers": total}
        for k in range(n):
            row[f"m{k}"] = (cells.get((c, k), 0) / total) if total and c + k < n else None
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{_naive(value):%Y-%m-%d %H:%M:%S.%f}'"


def _customer_definitions(mode: Mode | None, window_days: int) -> dict[str, str]:
    active = (f"a customer is active from an order until {window_days} days after it (no order within "
              f"{window_days} days = lost)" if mode == "transactional" else
              "a customer is active while one of their subscriptions is (started, not yet ended)")
    return {
        "active": active + "; active stretches that touch or overlap are one spell",
        "signups": "customers whose signup_at falls in the month",
        "new": "customers whose first spell starts in the month (first order / first subscription)",
        "returning": ("customers who were active at the month's start and ordered in the month"
                      if mode == "transactional" else
                      "customers active at the month's start and still active at its end"),
        "resurrected": "customers who start a new spell in the month after having been lost",
        "dormant": ("active at the month's end but no order in the month" if mode == "transactional" else
                    "active at the month's end but no order and no interaction (other than an email sent) in it"),
        "lost": "spells that end in the month (before the report date)",
        "active base": "customers active at the month's end (the last month ends at the report date); "
                       "active at end = active at start + new + resurrected − lost",
        "churn rate": ("subscriptions ended in the month ÷ subscriptions active at the month's start"
                       if mode == "subscription" else
                       f"customers lost in the month (no order within {window_days} days) ÷ active at its start"),
        "customer churn rate": "customers lost in the month ÷ customers active at its start",
        "retention": "cohort = month of a customer's first spell; m<k> = share of the cohort active at the end "
                     "of the k-th month after it (m0 = the cohort's own month)",
    }


# --- 2. value (the lake part; tiers come from pipelines.report.scores) -----------------------------


def value_frame(sql: LakeSQL, active_at_end: dict[str, int]) -> tuple[pl.DataFrame, list[str]]:
    """Revenue, orders, AOV, buyers and revenue per active customer per month (plus MRR at
    the month's end when the lake has subscriptions)."""
    notes: list[str] = []
    if sql.has(ORDERS.name):
        frame = sql.frame(f"""
            WITH o AS (
                SELECT midx(ordered_at) AS idx, sum(amount) AS revenue, count(*) AS orders,
                       count(DISTINCT customer_id) AS buyers
                FROM orders WHERE ordered_at >= {_ts(sql.grid.first)} GROUP BY ALL
            )
            SELECT m.month, CAST(coalesce(o.revenue, 0) AS DOUBLE) AS revenue, coalesce(o.orders, 0) AS orders,
                   coalesce(o.buyers, 0) AS buyers
            FROM months m LEFT JOIN o ON o.idx = m.idx ORDER BY m.idx
        """)
        frame = frame.with_columns((pl.col("revenue") / pl.col("orders")).fill_nan(None).alias("aov"))
    else:
        notes.append("no orders table: revenue, orders and AOV are not available")
        frame = sql.frame("SELECT month FROM months ORDER BY idx")
    active = pl.DataFrame({"month": list(active_at_end), "active_customers": list(active_at_end.values())},
                          schema={"month": pl.String, "active_customers": pl.Int64})
    frame = frame.join(active, on="month", how="left")
    if "revenue" in frame.columns:
        frame = frame.with_columns(
            (pl.col("revenue") / pl.col("active_customers")).fill_nan(None).alias("revenue_per_active"))
        frame = frame.with_columns(pl.when(pl.col("active_customers") > 0)
                                   .then(pl.col("revenue_per_active")).otherwise(None).alias("revenue_per_active"))
    if sql.has(SUBSCRIPTIONS.name):
        mrr = sql.frame("""
            WITH x AS (
                SELECT t.pidx - 1 AS idx, sum(x.monthly_price) AS mrr FROM subscriptions x
                JOIN points t ON x.started_at < t.t AND coalesce(x.ended_at, TIMESTAMP '9999-12-31') >= t.t
                WHERE t.pidx > 0 GROUP BY ALL
            )
            SELECT m.month, CAST(coalesce(x.mrr, 0) AS DOUBLE) AS mrr_at_end FROM months m
            LEFT JOIN x ON x.idx = m.idx ORDER BY m.idx
        """)
        frame = frame.join(mrr, on="month", how="left")
    return frame, notes


VALUE_DEFINITIONS = {
    "revenue": "sum of order amounts in the month",
    "orders": "orders placed in the month",
    "aov": "average order value = revenue ÷ orders",
    "buyers": "customers with at least one order in the month",
    "revenue per active customer": "revenue ÷ the active base at the month's end (section 1)",
    "mrr at end": "sum of monthly_price of the subscriptions active at the month's end",
}


# --- 3. sales funnel ---------------------------------------------------------------------------


def funnel_section(sql: LakeSQL) -> tuple[Section, pl.DataFrame | None]:
    """The funnel of the leads created in the report's months; returns the section and the
    per-lead frame of leads open at ``as_of`` (lead_id), for the grades."""
    section = Section(key="funnel", title="Sales funnel")
    section.definitions = {
        "leads": "leads created in the report's months (events up to the report date)",
        "engaged": "any lead activity (email open or click, web visit, download, webinar, …)",
        "demo_requested": "a demo_request activity",
        "meeting": "a meeting activity",
        "converted": "converted_at before the report date",
        "lost": "lost_at before the report date (and not converted)",
        "open": "neither converted nor lost before the report date",
        "reached": "a lead reached a stage when it has that stage's event or any later stage's (a lead "
                   "converted without a recorded meeting still passed the meeting stage)",
        "next-step conversion": "reached this stage ÷ reached the stage before",
        "cumulative conversion": "reached this stage ÷ leads created",
        "days to convert": "median of converted_at − created_at, in days, over the converted leads",
        "open leads by grade": "leads open at the report date by their grade in the newest lead score "
                               "table at or before it; 'unscored' = open but not in that table",
    }
    if not sql.has(LEADS.name):
        section.available = False
        section.notes.append("the lake has no leads table: no funnel")
        return section, None
    first = f"TIMESTAMP '{_naive(sql.grid.first):%Y-%m-%d %H:%M:%S}'"
    if sql.has(LEAD_ACTIVITIES.name):
        acts = f"""
            SELECT lead_id, true AS engaged,
                   bool_or(type = '{LeadActivityType.DEMO_REQUEST.value}') AS demo,
                   bool_or(type = '{LeadActivityType.MEETING.value}') AS meeting
            FROM lead_activities GROUP BY lead_id"""
    else:
        section.notes.append("no lead_activities table: engaged, demo requested and meeting are counted "
                             "only for converted leads (who passed them)")
        acts = "SELECT NULL::VARCHAR AS lead_id, false AS engaged, false AS demo, false AS meeting WHERE false"
    as_of = f"TIMESTAMP '{sql.as_of:%Y-%m-%d %H:%M:%S.%f}'"
    sql.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE funnel_leads AS
        WITH a AS ({acts})
        SELECT l.lead_id, l.source, l.created_at,
               l.converted_at IS NOT NULL AND l.converted_at < {as_of} AS converted,
               l.lost_at IS NOT NULL AND l.lost_at < {as_of}
                   AND NOT (l.converted_at IS NOT NULL AND l.converted_at < {as_of}) AS lost,
               coalesce(a.meeting, false) AS meeting_ev, coalesce(a.demo, false) AS demo_ev,
               coalesce(a.engaged, false) AS engaged_ev,
               CASE WHEN l.converted_at < {as_of}
                    THEN epoch(l.converted_at - l.created_at) / 86400.0 END AS days_to_convert
        FROM leads l LEFT JOIN a ON a.lead_id = l.lead_id
    """)
    reached = """
        count(*) AS created,
        count(*) FILTER (WHERE engaged_ev OR demo_ev OR meeting_ev OR converted) AS engaged,
        count(*) FILTER (WHERE demo_ev OR meeting_ev OR converted) AS demo_requested,
        count(*) FILTER (WHERE meeting_ev OR converted) AS meeting,
        count(*) FILTER (WHERE converted) AS converted,
        count(*) FILTER (WHERE lost) AS lost,
        count(*) FILTER (WHERE NOT converted AND NOT lost) AS open,
        median(days_to_convert) AS median_days_to_convert"""
    cohort = f"FROM funnel_leads WHERE created_at >= {first}"
    total = sql.frame(f"SELECT {reached} {cohort}")
    by_source = sql.frame(f"SELECT source, {reached} {cohort} GROUP BY source ORDER BY created DESC, source")
    row = total.row(0, named=True)
    stages = []
    for i, stage in enumerate(FUNNEL_STAGES):
        count = row[stage]
        before = row[FUNNEL_STAGES[i - 1]] if i else None
        stages.append({"stage": stage, "leads": count,
                       "next_step_conversion": (count / before) if before else None,
                       "cumulative_conversion": (count / row["created"]) if row["created"] else None})
    stages.append({"stage": "lost", "leads": row["lost"], "next_step_conversion": None,
                   "cumulative_conversion": (row["lost"] / row["created"]) if row["created"] else None})
    section.tables["stages"] = stages
    by_source = by_source.with_columns(
        (pl.col("converted") / pl.col("created")).alias("cumulative_conversion"),
        (pl.col("engaged") / pl.col("created")).alias("engaged_rate"),
        (pl.col("demo_requested") / pl.col("engaged")).fill_nan(None).alias("demo_per_engaged"),
        (pl.col("meeting") / pl.col("demo_requested")).fill_nan(None).alias("meeting_per_demo"),
        (pl.col("converted") / pl.col("meeting")).fill_nan(None).alias("converted_per_meeting"),
    )
    section.tables["by_source"] = by_source.to_dicts()
    monthly = sql.frame(f"""
        WITH f AS (
            SELECT midx(created_at) AS idx, count(*) AS created, count(*) FILTER (WHERE converted) AS converted
            FROM funnel_leads WHERE created_at >= {first} GROUP BY ALL
        )
        SELECT m.month, coalesce(f.created, 0) AS created, coalesce(f.converted, 0) AS converted
        FROM months m LEFT JOIN f ON f.idx = m.idx ORDER BY m.idx
    """)
    section.tables["monthly_cohorts"] = monthly.to_dicts()
    section.summary = {"leads": row["created"], "converted": row["converted"], "lost": row["lost"],
                       "open": row["open"], "conversion": stages[len(FUNNEL_STAGES) - 1]["cumulative_conversion"],
                       "median_days_to_convert": row["median_days_to_convert"]}
    open_now = sql.frame("SELECT lead_id FROM funnel_leads WHERE NOT converted AND NOT lost ORDER BY lead_id")
    return section, open_now


# --- 4. satisfaction ------------------------------------------------------------------------------


def satisfaction_section(sql: LakeSQL) -> Section:
    section = Section(key="satisfaction", title="Satisfaction")
    section.definitions = {
        "answers": "nps / csat interactions with a value, in the month",
        "answered twice": "a customer who answers the same survey more than once in a month counts once, "
                          "with their latest answer of that month (ties: the higher score); answers in "
                          "different months count in each",
        "responses": "customers who answered, after that rule",
        "NPS": f"promoters (≥ {PROMOTER_MIN:g}, i.e. 9–10), passives ({PASSIVE_MIN:g} to < {PROMOTER_MIN:g}, "
               f"i.e. 7–8), detractors (< {PASSIVE_MIN:g}, i.e. 0–6); NPS = % promoters − % detractors "
               "(−100 to 100)",
        "CSAT": f"% of responses ≥ {CSAT_SATISFIED_MIN:g} on the 1–5 scale (satisfied or very satisfied); "
                "mean = their average score",
        "window": "the whole-window figures pool every month's responses",
    }
    if not sql.has(INTERACTIONS.name):
        section.available = False
        section.notes.append("the lake has no interactions table: no survey answers")
        return section
    sql.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE survey AS
        WITH raw AS (
            SELECT customer_id, type, value, occurred_at, midx(occurred_at) AS idx
            FROM interactions
            WHERE type IN ('{InteractionType.NPS.value}', '{InteractionType.CSAT.value}') AND value IS NOT NULL
                AND occurred_at >= {_ts(sql.grid.first)}
        )
        SELECT *, row_number() OVER (PARTITION BY customer_id, type, idx
                                     ORDER BY occurred_at DESC, value DESC) = 1 AS kept
        FROM raw
    """)
    nps = f"""
        count(*) FILTER (WHERE type = 'nps') AS nps_answers,
        count(*) FILTER (WHERE type = 'nps' AND kept) AS nps_responses,
        count(*) FILTER (WHERE type = 'nps' AND kept AND value >= {PROMOTER_MIN}) AS promoters,
        count(*) FILTER (WHERE type = 'nps' AND kept AND value >= {PASSIVE_MIN} AND value < {PROMOTER_MIN})
            AS passives,
        count(*) FILTER (WHERE type = 'nps' AND kept AND value < {PASSIVE_MIN}) AS detractors,
        count(*) FILTER (WHERE type = 'csat') AS csat_answers,
        count(*) FILTER (WHERE type = 'csat' AND kept) AS csat_responses,
        count(*) FILTER (WHERE type = 'csat' AND kept AND value >= {CSAT_SATISFIED_MIN}) AS csat_satisfied,
        avg(value) FILTER (WHERE type = 'csat' AND kept) AS csat_mean"""
    monthly = sql.frame(f"""
        SELECT m.month, {nps} FROM months m LEFT JOIN survey s ON s.idx = m.idx
        GROUP BY m.idx, m.month ORDER BY m.idx
    """)
    total = sql.frame(f"SELECT 'all months' AS month, {nps} FROM survey")
    scores = [
        (100.0 * (pl.col("promoters") - pl.col("detractors")) / pl.col("nps_responses")).fill_nan(None).alias("nps"),
        (100.0 * pl.col("csat_satisfied") / pl.col("csat_responses")).fill_nan(None).alias("csat"),
    ]
    monthly = monthly.with_columns(scores)
    total = total.with_columns(scores)
    section.tables["monthly"] = monthly.to_dicts()
    section.tables["window"] = total.to_dicts()
    row = total.row(0, named=True)
    if not row["nps_answers"] and not row["csat_answers"]:
        section.notes.append("no nps or csat answers in the report's months")
    section.summary = {"nps": row["nps"], "nps_responses": row["nps_responses"], "csat": row["csat"],
                       "csat_responses": row["csat_responses"]}
    return section
