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
    """The ``spells`` temp table: customer_id, spell (1 = first), s (start), e (end, null while
    still active at as_of)."""
    as_of = f"TIMESTAMP '{sql.as_of:%Y-%m-%d %H:%M:%S.%f}'"
    if mode == "subscription":
        intervals = "SELECT customer_id, started_at AS s, ended_at AS e FROM subscriptions"
    else:
        intervals = (f"SELECT customer_id, ordered_at AS s, ordered_at + INTERVAL {int(window_days)} DAY AS e "
                     "FROM orders")
    sql.con.execute(f"""
        CREATE OR REPLACE TEMP TABLE spells AS
        WITH iv AS (
            SELECT customer_id, s, CASE WHEN e IS NULL OR e >= {as_of} THEN NULL ELSE e END AS e
            FROM ({intervals})
        ), running AS (
            SELECT *, max(coalesce(e, TIMESTAMP '9999-12-31')) OVER (
                PARTITION BY customer_id ORDER BY s, e NULLS LAST
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
            FROM iv
        ), numbered AS (
            SELECT *, sum(CASE WHEN prev_end IS NULL OR s > prev_end THEN 1 ELSE 0 END) OVER (
                PARTITION BY customer_id ORDER BY s, e NULLS LAST ROWS UNBOUNDED PRECEDING) AS spell
            FROM running
        )
        SELECT customer_id, CAST(spell AS INTEGER) AS spell, min(s) AS s,
               CASE WHEN bool_or(e IS NULL) THEN NULL ELSE max(e) END AS e
        FROM numbered GROUP BY customer_id, spell
    """)


# --- 1. customers per month ---------------------------------------------------------------------


def customers_section(sql: LakeSQL, window_days: int) -> Section:
    section = Section(key="customers", title="Customers per month")
    mode = lake_mode(sql)
    section.definitions = _customer_definitions(mode, window_days)
    if mode is None:
        section.available = False
        section.notes.append("the lake has neither orders nor subscriptions: no customer is ever active")
        return section
    build_spells(sql, mode, window_days)
    signups = "(SELECT count(*) FROM customers c WHERE c.signup_at >= m.ms AND c.signup_at < m.me)"
    if mode == "transactional":
        returning = """(SELECT count(DISTINCT o.customer_id) FROM orders o JOIN spells p
                          ON p.customer_id = o.customer_id AND p.s < m.ms AND (p.e IS NULL OR p.e >= m.ms)
                        WHERE o.ordered_at >= m.ms AND o.ordered_at < m.me)"""
        touched = "SELECT customer_id, ordered_at AS t FROM orders"
    else:
        returning = """(SELECT count(*) FROM spells p WHERE p.s < m.ms AND (p.e IS NULL OR p.e >= m.me))"""
        parts = []
        if sql.has(ORDERS.name):
            parts.append("SELECT customer_id, ordered_at AS t FROM orders")
        if sql.has(INTERACTIONS.name):
            outbound = ", ".join(f"'{t}'" for t in OUTBOUND)
            parts.append(f"SELECT customer_id, occurred_at AS t FROM interactions WHERE type NOT IN ({outbound})")
        touched = " UNION ALL ".join(parts)
    if touched:
        dormant = f"""(SELECT count(*) FROM spells p WHERE p.s < m.me AND (p.e IS NULL OR p.e >= m.me)
                        AND NOT EXISTS (SELECT 1 FROM ({touched}) a WHERE a.customer_id = p.customer_id
                                        AND a.t >= m.ms AND a.t < m.me))"""
    else:
        dormant = "NULL"
        section.notes.append("dormant: the lake has no orders or interactions to see who did nothing")
    subs = ""
    if mode == "subscription":
        subs = """,
            (SELECT count(*) FROM subscriptions x WHERE x.ended_at >= m.ms AND x.ended_at < m.me) AS subscriptions_ended,
            (SELECT count(*) FROM subscriptions x WHERE x.started_at < m.ms
                AND (x.ended_at IS NULL OR x.ended_at >= m.ms)) AS subscriptions_active_at_start"""
    frame = sql.frame(f"""
        SELECT m.month,
            {signups if sql.has(CUSTOMERS.name) else 'NULL'} AS signups,
            (SELECT count(*) FROM spells p WHERE p.spell = 1 AND p.s >= m.ms AND p.s < m.me) AS new,
            {returning} AS returning,
            (SELECT count(*) FROM spells p WHERE p.spell > 1 AND p.s >= m.ms AND p.s < m.me) AS resurrected,
            {dormant} AS dormant,
            (SELECT count(*) FROM spells p WHERE p.e >= m.ms AND p.e < m.me) AS lost,
            (SELECT count(*) FROM spells p WHERE p.s < m.ms AND (p.e IS NULL OR p.e >= m.ms)) AS active_at_start,
            (SELECT count(*) FROM spells p WHERE p.s < m.me AND (p.e IS NULL OR p.e >= m.me)) AS active_at_end
            {subs}
        FROM months m ORDER BY m.idx
    """)
    frame = frame.with_columns(
        (pl.col("lost") / pl.col("active_at_start")).alias("customer_churn_rate"))
    if mode == "subscription":
        frame = frame.with_columns(
            (pl.col("subscriptions_ended") / pl.col("subscriptions_active_at_start")).alias("churn_rate"))
    else:
        frame = frame.with_columns(pl.col("customer_churn_rate").alias("churn_rate"))
    frame = frame.with_columns(pl.col("churn_rate", "customer_churn_rate").fill_nan(None))
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
    counts = sql.frame("""
        WITH cohorts AS (
            SELECT p.customer_id, m.idx AS cohort FROM spells p JOIN months m ON p.s >= m.ms AND p.s < m.me
            WHERE p.spell = 1
        )
        SELECT c.cohort, m.idx - c.cohort AS k, count(DISTINCT p.customer_id) AS active
        FROM cohorts c JOIN spells p ON p.customer_id = c.customer_id
        JOIN months m ON m.idx >= c.cohort AND p.s < m.me AND (p.e IS NULL OR p.e >= m.me)
        GROUP BY ALL
    """)
    sizes = sql.frame("""
        SELECT m.idx AS cohort, m.month, count(p.customer_id) AS customers FROM months m
        LEFT JOIN spells p ON p.spell = 1 AND p.s >= m.ms AND p.s < m.me GROUP BY ALL ORDER BY m.idx
    """)
    n = sizes.height
    out = sizes
    for k in range(n):
        col = (counts.filter(pl.col("k") == k).select("cohort", pl.col("active").alias(f"m{k}")))
        out = out.join(col, on="cohort", how="left")
        # Months that exist for this cohort but nobody was active in them are 0, not unknown.
        out = out.with_columns(
            pl.when(pl.col("cohort") + k < n)
            .then(pl.col(f"m{k}").fill_null(0) / pl.col("customers"))
            .otherwise(None).fill_nan(None).alias(f"m{k}"))
    return out.drop("cohort")


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
        frame = sql.frame("""
            SELECT m.month, coalesce(sum(o.amount), 0) AS revenue, count(o.customer_id) AS orders,
                   count(DISTINCT o.customer_id) AS buyers
            FROM months m LEFT JOIN orders o ON o.ordered_at >= m.ms AND o.ordered_at < m.me
            GROUP BY m.idx, m.month ORDER BY m.idx
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
            SELECT m.month, coalesce(sum(x.monthly_price), 0) AS mrr_at_end FROM months m
            LEFT JOIN subscriptions x ON x.started_at < m.me AND (x.ended_at IS NULL OR x.ended_at >= m.me)
            GROUP BY m.idx, m.month ORDER BY m.idx
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
    monthly = sql.frame("""
        SELECT m.month, count(f.lead_id) AS created, count(f.lead_id) FILTER (WHERE f.converted) AS converted
        FROM months m LEFT JOIN funnel_leads f ON f.created_at >= m.ms AND f.created_at < m.me
        GROUP BY m.idx, m.month ORDER BY m.idx
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
            SELECT i.customer_id, i.type, i.value, i.occurred_at, m.idx, m.month
            FROM interactions i JOIN months m ON i.occurred_at >= m.ms AND i.occurred_at < m.me
            WHERE i.type IN ('{InteractionType.NPS.value}', '{InteractionType.CSAT.value}') AND i.value IS NOT NULL
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
