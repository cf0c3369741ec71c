"""The feature pipeline: raw lake tables -> point-in-time feature tables.

For every snapshot date ``as_of`` and every entity that exists then, one row of
features computed only from events strictly before ``as_of``. Everything is
DuckDB SQL over the lake's parquet files, vectorized across entities *and*
snapshot dates:

* windowed counts join each event to the snapshots whose window covers it
  (``as_of - N days <= t < as_of``), then aggregate with ``FILTER`` clauses;
* "latest before as_of" values (last order, last NPS, lifetime totals) come from
  an ``ASOF JOIN`` against per-entity running totals, so lifetime features cost
  one pass over the events instead of one per snapshot.

Times are compared as integer microseconds since the epoch, which keeps the
arithmetic exact and independent of DuckDB's session time zone.

Outputs (written atomically: a rerun replaces the directory, never appends):
``customer.parquet``, ``lead.parquet``, ``product.parquet`` and ``_build.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from crmdata.contract import (
    COMPANY_SIZES,
    CUSTOMERS,
    INTERACTIONS,
    JOB_SENIORITIES,
    LEAD_ACTIVITIES,
    LEADS,
    ORDERS,
    PRODUCTS,
    SUBSCRIPTIONS,
    TABLES,
    TIMESTAMP,
    InteractionType,
    LeadActivityType,
)
from crmdata.errors import CrmscoreError
from crmdata.lake import atomic_dir, last_event, read_manifest, table_path
from crmdata.times import as_utc
from crmdata.truth import truth_cutoffs
from features.catalog import (
    DEFAULT_EVERY,
    DEFAULT_PERIODS,
    EMAIL_WINDOW,
    EVENT_TIMESTAMP,
    FEATURES,
    JOIN_KEYS,
    LEAD_ACTIVITY_WINDOWS,
    LOGIN_WINDOWS,
    PRODUCT_WINDOWS,
    RFM_WINDOWS,
    SUPPORT_WINDOWS,
    TREND_PREVIOUS,
    TREND_RECENT,
    FeatureSpec,
    attribute_column,
    table_file,
)

log = logging.getLogger(__name__)

BUILD_SUMMARY = "_build.json"
#: Microseconds per day: window bounds are integer arithmetic on epoch microseconds.
DAY_US = 86_400_000_000
#: The grid's snapshots fall on this weekday (Monday) at 00:00 UTC.
GRID_WEEKDAY = 0

_POLARS_KIND: dict[str, pl.DataType] = {"int": pl.Int64(), "float": pl.Float64(), "str": pl.String()}
_ATTRIBUTE_KIND: dict[str, pl.DataType] = {"categorical": pl.String(), "numeric": pl.Float64()}


class EntitySummary(BaseModel):
    rows: int
    entities: int
    features: list[str]
    #: feature -> why it is absent (the raw tables it needs).
    unavailable: dict[str, str] = Field(default_factory=dict)
    attributes: list[str] = Field(default_factory=list)
    note: str | None = None


class BuildSummary(BaseModel):
    """What a build wrote; saved as ``_build.json`` beside the feature tables."""

    lake: str
    as_of: list[datetime]
    tables_present: list[str]
    tables_missing: list[str]
    entities: dict[str, EntitySummary]
    seconds: float
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    def render(self) -> str:
        lines = [
            (f"features from {self.lake}: {len(self.as_of)} snapshots "
            f"({self.as_of[0]:%Y-%m-%d} .. {self.as_of[-1]:%Y-%m-%d}) in {self.seconds:.1f}s")
        ]
        if self.tables_missing:
            lines.append(f"  lake lacks: {', '.join(self.tables_missing)}")
        for name, ent in self.entities.items():
            lines.append(
                f"  {name}: {ent.rows:,} rows, {ent.entities:,} entities, "
                f"{len(ent.features)} features"
                + (f" ({len(ent.attributes)} custom attributes)" if ent.attributes else "")
            )
            if ent.unavailable:
                lines.append(f"    unavailable: {', '.join(sorted(ent.unavailable))}")
            if ent.note:
                lines.append(f"    note: {ent.note}")
        return "\n".join(lines)


def read_build_summary(feature_tables: Path) -> BuildSummary:
    path = feature_tables / BUILD_SUMMARY
    if not path.exists():
        raise CrmscoreError(
            f"{feature_tables}: no feature tables; run `crmscore features build` first"
        )
    return BuildSummary.model_validate_json(path.read_text())


# --- snapshot grid ---------------------------------------------------------------------


def snapshot_grid(
    lake: Path,
    every: timedelta = DEFAULT_EVERY,
    periods: int = DEFAULT_PERIODS,
    include_truth: bool = True,
) -> list[datetime]:
    """Deterministic snapshot dates: ``periods`` steps of ``every`` back from the first
    Monday 00:00 UTC strictly after the lake's last event, plus truth cutoffs.

    The newest snapshot therefore sees every event, which is what serving needs.
    """
    if every <= timedelta(0) or periods < 1:
        raise CrmscoreError("the snapshot grid needs a positive period and at least one snapshot")
    end = last_event(lake)
    midnight = end.replace(hour=0, minute=0, second=0, microsecond=0)
    anchor = midnight + timedelta(days=(GRID_WEEKDAY - midnight.weekday()) % 7)
    if anchor <= end:
        anchor += timedelta(days=7)
    grid = [anchor - i * every for i in range(periods)]
    if include_truth:
        grid += truth_cutoffs(lake)
    return sorted(set(grid))


def parse_every(text: str) -> timedelta:
    """``7d``, ``12h`` or ``2w`` -> timedelta."""
    units = {"d": "days", "h": "hours", "w": "weeks"}
    text = text.strip().lower()
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise CrmscoreError(f"--every {text!r}: expected a number and a unit d/h/w, e.g. 7d") from None


def parse_dates(text: str) -> list[datetime]:
    """``2024-01-01,2024-04-01`` (dates or ISO datetimes, UTC unless an offset is given)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(as_utc(datetime.fromisoformat(part)))
        except ValueError:
            raise CrmscoreError(f"--as-of: {part!r} is not an ISO date (YYYY-MM-DD)") from None
    if not out:
        raise CrmscoreError("--as-of: no dates given")
    return out


# --- build -----------------------------------------------------------------------------


@dataclass
class _Context:
    """What one build knows about the lake: the DuckDB connection and the tables present."""

    con: Any
    present: set[str]
    attributes: dict[str, dict[str, str]]

    def has(self, *tables: str) -> bool:
        return all(t in self.present for t in tables)

    def available(self, spec: FeatureSpec) -> bool:
        return self.has(*spec.requires)


def build_features(
    lake: Path,
    out: Path,
    as_of: Sequence[datetime],
    *,
    threads: int | None = None,
) -> BuildSummary:
    """Compute the customer, lead and product feature tables at each ``as_of`` date.

    Writes ``out`` atomically (replacing whatever was there) and returns the summary.
    ``as_of`` dates are UTC (naive ones are taken as UTC); duplicates are ignored.
    """
    import duckdb

    started = time.perf_counter()
    snapshots = sorted({as_utc(d) for d in as_of})
    if not snapshots:
        raise CrmscoreError("no snapshot dates to build features for")
    manifest = read_manifest(lake)
    present = {name for name in TABLES if table_path(lake, name).exists()}
    for required in (CUSTOMERS.name, ORDERS.name):
        if required not in present:
            raise CrmscoreError(f"{lake}: the lake has no {required} table (required)")

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for name in present:
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{table_path(lake, name)}')"
        )
    con.execute("CREATE TEMP TABLE snap (as_of BIGINT)")
    con.executemany(
        "INSERT INTO snap VALUES (?)", [[int(d.timestamp() * 1_000_000)] for d in snapshots]
    )
    ctx = _Context(con=con, present=present, attributes=manifest.custom_attributes)

    frames: dict[str, pl.DataFrame] = {}
    summaries: dict[str, EntitySummary] = {}
    for entity, compute in (
        ("customer", _customer_sql),
        ("lead", _lead_sql),
        ("product", _product_sql),
    ):
        t0 = time.perf_counter()
        frame, summary = _finish(ctx, entity, compute(ctx))
        frames[entity], summaries[entity] = frame, summary
        log.info(
            "%s features: %d rows x %d features in %.1fs",
            entity,
            frame.height,
            len(summary.features),
            time.perf_counter() - t0,
        )

    summary = BuildSummary(
        lake=str(lake),
        as_of=snapshots,
        tables_present=[t for t in TABLES if t in present],
        tables_missing=[t for t in TABLES if t not in present],
        entities=summaries,
        seconds=round(time.perf_counter() - started, 3),
    )
    with atomic_dir(out) as tmp:
        for entity, frame in frames.items():
            write_feature_table(frame, tmp / table_file(entity))
        (tmp / BUILD_SUMMARY).write_text(summary.model_dump_json(indent=2))
    return summary


def write_feature_table(frame: pl.DataFrame, path: Path) -> None:
    """Write with plain ``string`` columns: Feast's schema inference reads arrow's
    ``large_string`` (polars' default) as Json, not String."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = frame.to_arrow()
    schema = pa.schema(
        [
            pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f
            for f in table.schema
        ]
    )
    pq.write_table(table.cast(schema), path, compression="zstd")


def _finish(ctx: _Context, entity: str, sql: str | None) -> tuple[pl.DataFrame, EntitySummary]:
    """Run an entity's query and shape the result: catalogue order and types, attributes last."""
    key = JOIN_KEYS[entity]
    specs = FEATURES[entity]
    table = {"customer": CUSTOMERS, "lead": LEADS, "product": PRODUCTS}[entity]
    present_entity_table = ctx.has(table.name)
    # A missing entity table still gets its (empty) table with every feature the other
    # tables allow, so the view and its service stay registered with a stable schema.
    kept = [s for s in specs if ctx.available(s)]
    unavailable = {
        s.name: "needs " + ", ".join(t for t in s.requires if not ctx.has(t))
        for s in specs
        if s not in kept
    }
    attributes = ctx.attributes.get(table.name, {}) if present_entity_table else {}
    schema: dict[str, pl.DataType] = {key: pl.String(), EVENT_TIMESTAMP: TIMESTAMP}
    schema |= {s.name: _POLARS_KIND[s.kind] for s in kept}
    schema |= {attribute_column(a): _ATTRIBUTE_KIND[k] for a, k in attributes.items()}

    note = None
    if sql is None:
        frame = pl.DataFrame(schema=schema)
        note = f"the lake has no {table.name} table: no rows"
    else:
        raw = ctx.con.sql(sql).pl()
        frame = raw.select(
            pl.col(key).cast(pl.String),
            pl.from_epoch(pl.col("as_of"), time_unit="us").dt.replace_time_zone("UTC").alias(
                EVENT_TIMESTAMP
            ),
            *[pl.col(name).cast(dtype) for name, dtype in list(schema.items())[2:]],
        ).sort(EVENT_TIMESTAMP, key)
        if frame.is_empty() and entity == "product":
            note = "no product ids in orders and no products table: no rows"
    summary = EntitySummary(
        rows=frame.height,
        entities=frame[key].n_unique(),
        features=[s.name for s in kept] + [attribute_column(a) for a in attributes],
        unavailable=unavailable,
        attributes=[attribute_column(a) for a in attributes],
        note=note,
    )
    return frame, summary


def _count(cond: str) -> str:
    return f"count(*) FILTER (WHERE {cond})"


def _window(col: str, days: int) -> str:
    return f"{col} >= s.as_of - {days * DAY_US}"


def _typed(etype: str, col: str, days: int) -> str:
    """Events of one type inside an N-day window."""
    return _count(f"type = '{etype}' AND {_window(col, days)}")


def _days_since(col: str) -> str:
    return f"(b.as_of - {col}) / {float(DAY_US)}"


def _attribute_select(ctx: _Context, table: str, alias: str) -> str:
    cols = [
        f", {alias}.\"{name}\" AS \"{attribute_column(name)}\""
        for name in ctx.attributes.get(table, {})
    ]
    return "".join(cols)


def _customer_sql(ctx: _Context) -> str:
    """Customer snapshots.

    Lifetime and "latest before as_of" features use snapshot buckets: each event is
    assigned to the first snapshot after it (a tiny ASOF join against the snapshot
    list), aggregated per (customer, bucket), then accumulated over the snapshots in
    order with window functions. That is one pass over the events however long the
    history, instead of joining every event to every later snapshot.
    """
    o, i, s_, p = ORDERS.name, INTERACTIONS.name, SUBSCRIPTIONS.name, PRODUCTS.name
    key = JOIN_KEYS["customer"]
    it = InteractionType
    # Newest value of a survey type, ties at one timestamp broken by the larger value.
    newest = "arg_max(value, {{'t': t, 'v': value}}) FILTER (WHERE type = '{0}' AND value IS NOT NULL)"
    ctes = [
        f"""grid AS (
            SELECT c.{key}, s.as_of, epoch_us(c.signup_at) AS signup
            FROM {CUSTOMERS.name} c CROSS JOIN snap s)""",
        f"""ord AS (SELECT {key}, product_id, epoch_us(ordered_at) AS t, amount FROM {o})""",
        f"""ord_b AS (
            SELECT o.{key}, s.as_of, count(*) AS n, sum(o.amount) AS amount, max(o.t) AS last_t
            FROM ord o ASOF JOIN snap s ON o.t < s.as_of GROUP BY ALL)""",
        f"""prod_b AS (
            SELECT f.{key}, s.as_of, count(*) AS n
            FROM (SELECT {key}, min(t) AS t FROM ord WHERE product_id IS NOT NULL
                  GROUP BY {key}, product_id) f
            ASOF JOIN snap s ON f.t < s.as_of GROUP BY ALL)""",
        f"""ord_win AS (
            SELECT o.{key}, s.as_of,
                   {", ".join(
                       f"count(*) FILTER (WHERE {_window('o.t', w)}) AS orders_{w}d, "
                       f"sum(o.amount) FILTER (WHERE {_window('o.t', w)}) AS revenue_{w}d"
                       for w in RFM_WINDOWS
                   )},
                   count(*) FILTER (WHERE {_window('o.t', TREND_RECENT + TREND_PREVIOUS)}
                                      AND NOT {_window('o.t', TREND_RECENT)}) AS orders_prev,
                   sum(o.amount) FILTER (WHERE {_window('o.t', TREND_RECENT + TREND_PREVIOUS)}
                                      AND NOT {_window('o.t', TREND_RECENT)}) AS revenue_prev
            FROM ord o JOIN snap s
              ON o.t < s.as_of
             AND {_window('o.t', max(*RFM_WINDOWS, TREND_RECENT + TREND_PREVIOUS))}
            GROUP BY ALL)""",
    ]
    bucket_joins = [
        f"LEFT JOIN ord_b ob ON g.{key} = ob.{key} AND g.as_of = ob.as_of",
        f"LEFT JOIN prod_b pb ON g.{key} = pb.{key} AND g.as_of = pb.as_of",
    ]
    cum_cols = [
        "sum(ob.n) OVER w AS orders_total",
        "sum(ob.amount) OVER w AS revenue_total",
        "max(ob.last_t) OVER w AS last_order",
        "sum(pb.n) OVER w AS distinct_products",
    ]
    joins = [f"LEFT JOIN ord_win ow ON b.{key} = ow.{key} AND b.as_of = ow.as_of"]
    rp = TREND_RECENT / TREND_PREVIOUS
    cols = [
        "b.*",
        "coalesce(cu.orders_total, 0) AS orders_total",
        "coalesce(cu.revenue_total, 0) AS revenue_total",
        *[
            f"coalesce(ow.orders_{w}d, 0) AS orders_{w}d, coalesce(ow.revenue_{w}d, 0) AS revenue_{w}d"
            for w in RFM_WINDOWS
        ],
        f"coalesce(ow.orders_{TREND_RECENT}d, 0) - coalesce(ow.orders_prev, 0) * {rp} AS orders_trend",
        f"coalesce(ow.revenue_{TREND_RECENT}d, 0) - coalesce(ow.revenue_prev, 0) * {rp} AS revenue_trend",
        "cu.revenue_total / nullif(cu.orders_total, 0) AS avg_order_value",
        f"{_days_since('cu.last_order')} AS days_since_last_order",
        "coalesce(cu.distinct_products, 0) AS distinct_products",
    ]
    if ctx.has(p):
        ctes.append(
            f"""cat_b AS (
                SELECT f.{key}, s.as_of, count(*) AS n
                FROM (SELECT o.{key}, min(o.t) AS t FROM ord o JOIN {p} p ON o.product_id = p.product_id
                      GROUP BY o.{key}, p.category) f
                ASOF JOIN snap s ON f.t < s.as_of GROUP BY ALL)"""
        )
        bucket_joins.append(f"LEFT JOIN cat_b cb ON g.{key} = cb.{key} AND g.as_of = cb.as_of")
        cum_cols.append("sum(cb.n) OVER w AS distinct_categories")
        cols.append("coalesce(cu.distinct_categories, 0) AS distinct_categories")
    if ctx.has(i):
        max_w = max(*LOGIN_WINDOWS, *SUPPORT_WINDOWS, EMAIL_WINDOW)
        win_cols = [
            *[f"{_typed(it.LOGIN, 'e.t', w)} AS logins_{w}d" for w in LOGIN_WINDOWS],
            *[
                f"{_typed(it.SUPPORT_TICKET, 'e.t', w)} AS tickets_{w}d, "
                f"{_typed(it.COMPLAINT, 'e.t', w)} AS complaints_{w}d"
                for w in SUPPORT_WINDOWS
            ],
            *[
                f"{_typed(t, 'e.t', EMAIL_WINDOW)} AS {t}_n"
                for t in (it.EMAIL_SENT, it.EMAIL_OPEN, it.EMAIL_CLICK)
            ],
        ]
        ctes += [
            f"""ev AS (SELECT {key}, epoch_us(occurred_at) AS t, type, value FROM {i})""",
            f"""ev_win AS (
                SELECT e.{key}, s.as_of, {", ".join(win_cols)}
                FROM ev e JOIN snap s ON e.t < s.as_of AND {_window('e.t', max_w)}
                GROUP BY ALL)""",
            f"""ev_b AS (
                SELECT e.{key}, s.as_of,
                       max(e.t) FILTER (WHERE type = '{it.LOGIN}') AS last_login,
                       max(e.t) FILTER (WHERE type = '{it.SUPPORT_TICKET}') AS last_ticket,
                       {newest.format(it.NPS)} AS nps,
                       {newest.format(it.CSAT)} AS csat
                FROM ev e ASOF JOIN snap s ON e.t < s.as_of GROUP BY ALL)""",
        ]
        bucket_joins.append(f"LEFT JOIN ev_b eb ON g.{key} = eb.{key} AND g.as_of = eb.as_of")
        cum_cols += [
            "max(eb.last_login) OVER w AS last_login",
            "max(eb.last_ticket) OVER w AS last_ticket",
            "last_value(eb.nps IGNORE NULLS) OVER w AS last_nps",
            "last_value(eb.csat IGNORE NULLS) OVER w AS last_csat",
        ]
        joins.append(f"LEFT JOIN ev_win iw ON b.{key} = iw.{key} AND b.as_of = iw.as_of")
        cols += [
            f"{_days_since('cu.last_login')} AS days_since_last_login",
            *[f"coalesce(iw.logins_{w}d, 0) AS logins_{w}d" for w in LOGIN_WINDOWS],
            f"{_days_since('cu.last_ticket')} AS days_since_last_ticket",
            *[
                f"coalesce(iw.tickets_{w}d, 0) AS tickets_{w}d, "
                f"coalesce(iw.complaints_{w}d, 0) AS complaints_{w}d"
                for w in SUPPORT_WINDOWS
            ],
            "cu.last_nps AS last_nps",
            "cu.last_csat AS last_csat",
            f"iw.{it.EMAIL_OPEN}_n / nullif(iw.{it.EMAIL_SENT}_n, 0) AS email_open_rate_{EMAIL_WINDOW}d",
            f"iw.{it.EMAIL_CLICK}_n / nullif(iw.{it.EMAIL_SENT}_n, 0) AS email_click_rate_{EMAIL_WINDOW}d",
        ]
    if ctx.has(s_):
        # Active at as_of: started before it and not ended before it. An end date at or
        # after as_of is in the future of the snapshot, so only "not ended yet" is used.
        active = "(x.ended_t IS NULL OR x.ended_t >= s.as_of)"
        ctes.append(
            f"""sub AS (
                SELECT x.{key}, s.as_of,
                       count(*) FILTER (WHERE {active}) AS n_active,
                       arg_max(x.plan, x.started) FILTER (WHERE {active}) AS plan,
                       arg_max(x.monthly_price, x.started) FILTER (WHERE {active}) AS price,
                       max(x.started) FILTER (WHERE {active}) AS started,
                       count(*) FILTER (WHERE NOT {active}) AS ended
                FROM (SELECT {key}, plan, monthly_price, epoch_us(started_at) AS started,
                             epoch_us(ended_at) AS ended_t FROM {s_}) x
                JOIN snap s ON x.started < s.as_of
                GROUP BY ALL)"""
        )
        joins.append(f"LEFT JOIN sub su ON b.{key} = su.{key} AND b.as_of = su.as_of")
        cols += [
            "CASE WHEN coalesce(su.n_active, 0) > 0 THEN 1 ELSE 0 END AS subscription_active",
            "su.plan AS subscription_plan",
            "su.price AS subscription_monthly_price",
            f"{_days_since('su.started')} AS subscription_age_days",
            "coalesce(su.ended, 0) AS subscriptions_ended",
        ]
    # Accumulate over every snapshot (signed up or not, so events logged before a
    # sign-up date still count), then keep the snapshots after sign-up.
    ctes += [
        f"""cum AS (
            SELECT g.{key}, g.as_of, {", ".join(cum_cols)}
            FROM grid g {" ".join(bucket_joins)}
            WINDOW w AS (PARTITION BY g.{key} ORDER BY g.as_of
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))""",
        f"""base AS (
            SELECT c.{key}, s.as_of,
                   (s.as_of - epoch_us(c.signup_at)) / {float(DAY_US)} AS tenure_days,
                   c.segment, c.acquisition_channel, c.country, c.industry
                   {_attribute_select(ctx, CUSTOMERS.name, "c")}
            FROM {CUSTOMERS.name} c JOIN snap s ON epoch_us(c.signup_at) < s.as_of)""",
    ]
    joins.insert(0, f"JOIN cum cu ON b.{key} = cu.{key} AND b.as_of = cu.as_of")
    return f"WITH {', '.join(ctes)} SELECT {', '.join(cols)} FROM base b {' '.join(joins)}"


def _lead_sql(ctx: _Context) -> str | None:
    if not ctx.has(LEADS.name):
        return None
    key = JOIN_KEYS["lead"]
    sizes = "[" + ", ".join(f"'{v}'" for v in COMPANY_SIZES) + "]"
    levels = "[" + ", ".join(f"'{v}'" for v in JOB_SENIORITIES) + "]"
    ctes = [
        f"""base AS (
            SELECT l.{key}, s.as_of, l.source, l.country, l.industry,
                   l.company_size, list_position({sizes}, l.company_size) - 1 AS company_size_rank,
                   l.job_seniority, list_position({levels}, l.job_seniority) - 1 AS job_seniority_rank,
                   (s.as_of - epoch_us(l.created_at)) / {float(DAY_US)} AS days_since_created
                   {_attribute_select(ctx, LEADS.name, "l")}
            FROM {LEADS.name} l JOIN snap s ON epoch_us(l.created_at) < s.as_of)"""
    ]
    cols = ["b.*"]
    joins: list[str] = []
    if ctx.has(LEAD_ACTIVITIES.name):
        at = LeadActivityType
        win_cols = []
        for w in LEAD_ACTIVITY_WINDOWS:
            win_cols.append(f"{_count(_window('a.t', w))} AS activities_{w}d")
            win_cols += [f"{_typed(t, 'a.t', w)} AS {t.value}_{w}d" for t in at]
        ctes += [
            f"""act AS (SELECT {key}, epoch_us(occurred_at) AS t, type FROM {LEAD_ACTIVITIES.name})""",
            f"""act_win AS (
                SELECT a.{key}, s.as_of, {", ".join(win_cols)}
                FROM act a JOIN snap s ON a.t < s.as_of AND {_window('a.t', max(LEAD_ACTIVITY_WINDOWS))}
                GROUP BY ALL)""",
            f"""act_last AS (SELECT DISTINCT {key}, t FROM act)""",
            f"""demo AS (SELECT {key}, min(t) AS t FROM act WHERE type = '{at.DEMO_REQUEST}' GROUP BY ALL)""",
            f"""pricing AS (
                SELECT {key}, t, sum(n) OVER (PARTITION BY {key} ORDER BY t) AS visits
                FROM (SELECT {key}, t, count(*) AS n FROM act
                      WHERE type = '{at.PRICING_PAGE_VISIT}' GROUP BY ALL))""",
        ]
        joins += [
            f"LEFT JOIN act_win aw ON b.{key} = aw.{key} AND b.as_of = aw.as_of",
            f"ASOF LEFT JOIN act_last al ON b.{key} = al.{key} AND b.as_of > al.t",
            f"LEFT JOIN demo d ON b.{key} = d.{key} AND d.t < b.as_of",
            f"ASOF LEFT JOIN pricing pv ON b.{key} = pv.{key} AND b.as_of > pv.t",
        ]
        for w in LEAD_ACTIVITY_WINDOWS:
            cols.append(f"coalesce(aw.activities_{w}d, 0) AS activities_{w}d")
            cols += [f"coalesce(aw.{t.value}_{w}d, 0) AS {t.value}_{w}d" for t in at]
        short, long = LEAD_ACTIVITY_WINDOWS[0], LEAD_ACTIVITY_WINDOWS[-1]
        cols += [
            f"{_days_since('al.t')} AS days_since_last_activity",
            "CASE WHEN d.t IS NULL THEN 0 ELSE 1 END AS demo_requested",
            "coalesce(pv.visits, 0) AS pricing_page_visits",
            (f"coalesce(aw.activities_{short}d, 0) / {float(short)}"
            f" - coalesce(aw.activities_{long}d, 0) / {float(long)} AS engagement_velocity"),
        ]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(cols)} FROM base b {' '.join(joins)}"


def _product_sql(ctx: _Context) -> str:
    key = JOIN_KEYS["product"]
    o, p = ORDERS.name, PRODUCTS.name
    ctes = [
        f"""ord AS (
            SELECT product_id, customer_id, epoch_us(ordered_at) AS t
            FROM {o} WHERE product_id IS NOT NULL)""",
    ]
    if ctx.has(p):
        # Products have no creation date: every catalogue product is in every snapshot.
        ctes.append(
            f"""base AS (
                SELECT p.{key}, s.as_of, p.price AS product_price, p.category AS product_category,
                       CASE WHEN p.is_repeatable THEN 1 ELSE 0 END AS product_is_repeatable
                FROM {p} p CROSS JOIN snap s)"""
        )
    else:
        ctes.append(
            f"""base AS (
                SELECT f.{key}, s.as_of
                FROM (SELECT product_id AS {key}, min(t) AS t FROM ord GROUP BY 1) f
                JOIN snap s ON f.t < s.as_of)"""
        )
    win_cols = ", ".join(
        f"{_count(_window('o.t', w))} AS product_orders_{w}d, "
        f"count(DISTINCT o.customer_id) FILTER (WHERE {_window('o.t', w)}) AS product_buyers_{w}d"
        for w in PRODUCT_WINDOWS
    )
    ctes += [
        f"""pop AS (
            SELECT o.product_id AS {key}, s.as_of, {win_cols}
            FROM ord o JOIN snap s ON o.t < s.as_of AND {_window('o.t', max(PRODUCT_WINDOWS))}
            GROUP BY ALL)""",
        # Each buyer's first and second purchase time of the product.
        """pairs AS MATERIALIZED (
            SELECT product_id, customer_id, first2[1] AS first_t, first2[2] AS second_t
            FROM (SELECT product_id, customer_id, min(t, 2) AS first2 FROM ord GROUP BY ALL))""",
        f"""rep AS (
            SELECT x.product_id AS {key}, s.as_of, count(*) AS buyers,
                   count(*) FILTER (WHERE x.second_t < s.as_of) AS repeaters
            FROM pairs x JOIN snap s ON x.first_t < s.as_of GROUP BY ALL)""",
    ]
    cols = [
        "b.*",
        *[
            f"coalesce(pop.product_orders_{w}d, 0) AS product_orders_{w}d, "
            f"coalesce(pop.product_buyers_{w}d, 0) AS product_buyers_{w}d"
            for w in PRODUCT_WINDOWS
        ],
        "rep.repeaters / nullif(rep.buyers, 0) AS product_repeat_rate",
    ]
    joins = [
        f"LEFT JOIN pop ON b.{key} = pop.{key} AND b.as_of = pop.as_of",
        f"LEFT JOIN rep ON b.{key} = rep.{key} AND b.as_of = rep.as_of",
    ]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(cols)} FROM base b {' '.join(joins)}"
