"""The feature SQL: one query per entity, from raw lake tables to snapshot rows.

For every snapshot date ``as_of`` and every entity that exists then, one row of
features computed only from events strictly before ``as_of``, vectorized across
entities *and* snapshot dates:

* windowed counts join each event to the snapshots whose window covers it
  (``as_of - N days <= t < as_of``), then aggregate with ``FILTER`` clauses;
* "latest before as_of" values (last order, last NPS, lifetime totals) put each
  event in its snapshot bucket (the first snapshot after it: ``_bucket``), aggregate
  per bucket and accumulate over the snapshots in order, so lifetime features cost
  one pass over the events instead of one per snapshot.

Times are compared as integer microseconds since the epoch, which keeps the
arithmetic exact and independent of the session time zone.

The queries are written once, in DuckDB's dialect, and DuckDB runs them as they are;
``features.spark`` transpiles the same text to Spark SQL with sqlglot. So they keep to
what both engines mean the same way: no ``ASOF JOIN`` (Spark has none: the snapshot
buckets are a range join on ``snap``), no DuckDB list functions, and divisions by
integer literals (``/`` is floating-point in both, while a literal such as ``7.0`` is a
DECIMAL that Spark divides at six decimal places).

The queries read the views and the ``snap`` table (``as_of``, ``prev_as_of``) that
``SqlContext.open`` creates; each returns the entity's join key, ``as_of`` (epoch
microseconds) and the catalogue's features that the lake's tables allow
(``features/catalog.py``). ``features.build`` runs them and shapes the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crmdata.contract import (
    CUSTOMERS,
    INTERACTIONS,
    LEAD_ACTIVITIES,
    LEADS,
    ORDERS,
    PRODUCTS,
    SUBSCRIPTIONS,
    InteractionType,
    LeadActivityType,
)
from crmdata.lake import table_path
from features.catalog import (
    EMAIL_WINDOW,
    JOIN_KEYS,
    LEAD_ACTIVITY_WINDOWS,
    LEAD_RANKS,
    LOGIN_WINDOWS,
    PRODUCT_WINDOWS,
    RFM_WINDOWS,
    SUPPORT_WINDOWS,
    TREND_PREVIOUS,
    TREND_RECENT,
    VALUE_WINDOW,
    FeatureSpec,
    LeadStatus,
    attribute_column,
)

if TYPE_CHECKING:
    import polars as pl

#: DuckDB types of the contract's kinds (for the empty orders view of a lake without orders).
_DUCKDB_TYPES = {"id": "VARCHAR", "str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN",
                 "timestamp": "TIMESTAMPTZ"}

#: Microseconds per day: window bounds are integer arithmetic on epoch microseconds.
DAY_US = 86_400_000_000
#: ``prev_as_of`` of the first snapshot: its bucket holds every earlier event.
_BEGINNING = -(2**63)


def snapshot_rows(snapshots: Sequence[datetime]) -> list[tuple[int, int]]:
    """The rows of the ``snap`` table: (``as_of``, ``prev_as_of``) in epoch microseconds,
    one per distinct snapshot (UTC-aware), oldest first. The bucket of a snapshot is
    ``prev_as_of <= t < as_of``."""
    stamps = sorted({int(d.timestamp() * 1_000_000) for d in snapshots})
    return list(zip(stamps, [_BEGINNING, *stamps[:-1]], strict=True))


def empty_orders_sql() -> str:
    """An empty orders table with the contract's columns: the customer and product queries
    read orders unconditionally; a subscription business without orders gets this, and the
    build leaves out the features that need orders (FeatureSpec.requires), so none is a
    column of zeros."""
    columns = ", ".join(f"NULL::{_DUCKDB_TYPES[c.kind]} AS {c.name}" for c in ORDERS.columns)
    return f"SELECT {columns} WHERE false"


@dataclass
class SqlContext:
    """What one build knows about the lake: the DuckDB connection (one view per present
    table, the ``snap`` table of snapshot dates), the tables present and the custom
    attributes declared per table. ``features.spark`` has the same over a Spark session."""

    con: Any  # duckdb.DuckDBPyConnection
    present: set[str]
    attributes: dict[str, dict[str, str]]

    @classmethod
    def open(
        cls,
        lake: Path,
        present: set[str],
        attributes: dict[str, dict[str, str]],
        snapshots: Sequence[datetime],
        threads: int | None = None,
    ) -> SqlContext:
        """A fresh in-memory DuckDB over the lake's parquet files and the snapshot dates
        (UTC-aware), set up the way the queries below expect."""
        import duckdb

        con = duckdb.connect()
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        for name in present:
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{table_path(lake, name)}')"
            )
        if ORDERS.name not in present:
            con.execute(f"CREATE VIEW {ORDERS.name} AS {empty_orders_sql()}")
        con.execute("CREATE TEMP TABLE snap (as_of BIGINT, prev_as_of BIGINT)")
        con.executemany("INSERT INTO snap VALUES (?, ?)", [list(r) for r in snapshot_rows(snapshots)])
        return cls(con=con, present=present, attributes=attributes)

    def frame(self, sql: str) -> pl.DataFrame:
        """Run one of the queries below."""
        return self.con.sql(sql).pl()

    def has(self, *tables: str) -> bool:
        return all(t in self.present for t in tables)

    def available(self, spec: FeatureSpec) -> bool:
        return self.has(*spec.requires)


def _count(cond: str) -> str:
    return f"count(*) FILTER (WHERE {cond})"


def _window(col: str, days: int) -> str:
    return f"{col} >= s.as_of - {days * DAY_US}"


def _typed(etype: str, col: str, days: int) -> str:
    """Events of one type inside an N-day window."""
    return _count(f"type = '{etype}' AND {_window(col, days)}")


def _days_since(col: str) -> str:
    return f"(b.as_of - {col}) / {DAY_US}"


def _bucket(col: str) -> str:
    """Join each event to its snapshot bucket ``s``: the first snapshot after it."""
    return f"JOIN snap s ON {col} < s.as_of AND {col} >= s.prev_as_of"


def _attribute_select(ctx: SqlContext, table: str, alias: str) -> str:
    cols = [
        f", {alias}.\"{name}\" AS \"{attribute_column(name)}\""
        for name in ctx.attributes.get(table, {})
    ]
    return "".join(cols)


def customer_sql(ctx: SqlContext) -> str:
    """Customer snapshots.

    Lifetime and "latest before as_of" features use snapshot buckets: each event is
    assigned to the first snapshot after it (a range join against the short snapshot
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
            FROM ord o {_bucket('o.t')} GROUP BY ALL)""",
        f"""prod_b AS (
            SELECT f.{key}, s.as_of, count(*) AS n
            FROM (SELECT {key}, min(t) AS t FROM ord WHERE product_id IS NOT NULL
                  GROUP BY {key}, product_id) f
            {_bucket('f.t')} GROUP BY ALL)""",
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
                {_bucket('f.t')} GROUP BY ALL)"""
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
                FROM ev e {_bucket('e.t')} GROUP BY ALL)""",
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
                   (s.as_of - epoch_us(c.signup_at)) / {DAY_US} AS tenure_days,
                   c.segment, c.acquisition_channel, c.country, c.industry
                   {_attribute_select(ctx, CUSTOMERS.name, "c")}
            FROM {CUSTOMERS.name} c JOIN snap s ON epoch_us(c.signup_at) < s.as_of)""",
    ]
    joins.insert(0, f"JOIN cum cu ON b.{key} = cu.{key} AND b.as_of = cu.as_of")
    return f"WITH {', '.join(ctes)} SELECT {', '.join(cols)} FROM base b {' '.join(joins)}"


def _lead_status(lead: str) -> tuple[str, str]:
    """``lead_status`` and ``lead_closed_at`` of a lead row at ``s.as_of``: the rule of
    ``features.labels._lead_open`` (closed = converted or lost strictly before as_of;
    the contract allows one outcome per lead). The date is formatted from the epoch
    microseconds as a naive timestamp, so it is the UTC date whatever DuckDB's time zone."""
    closed = (
        (LeadStatus.CONVERTED, f"epoch_us({lead}.converted_at)"),
        (LeadStatus.LOST, f"epoch_us({lead}.lost_at)"),
    )
    status = " ".join(f"WHEN {t} < s.as_of THEN '{name}'" for name, t in closed)
    day = " ".join(f"WHEN {t} < s.as_of THEN strftime(make_timestamp({t}), '%Y-%m-%d')" for _, t in closed)
    return f"CASE {status} ELSE '{LeadStatus.OPEN}' END", f"CASE {day} END"


def lead_sql(ctx: SqlContext) -> str | None:
    """Lead snapshots from the first after ``created_at``: firmographics, status and
    activity; None when the lake has no leads table."""
    if not ctx.has(LEADS.name):
        return None
    key = JOIN_KEYS["lead"]
    ranks = ""
    for feature, (attribute, values) in LEAD_RANKS.items():  # position in the ordered values, 0-based
        listed = " ".join(f"WHEN '{v}' THEN {n}" for n, v in enumerate(values))
        ranks += f"l.{attribute}, CASE l.{attribute} {listed} END AS {feature}, "
    status, closed_at = _lead_status("l")
    ctes = [
        f"""base AS (
            SELECT l.{key}, s.as_of, l.source, l.country, l.industry, {ranks}
                   (s.as_of - epoch_us(l.created_at)) / {DAY_US} AS days_since_created,
                   {status} AS lead_status, {closed_at} AS lead_closed_at
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
            f"""demo AS (SELECT {key}, min(t) AS t FROM act WHERE type = '{at.DEMO_REQUEST}' GROUP BY ALL)""",
            # The last activity and the pricing-page visits before as_of: per snapshot
            # bucket, accumulated over every snapshot (as for customers, so an activity
            # logged before the lead's created_at still counts).
            f"""act_b AS (
                SELECT a.{key}, s.as_of, max(a.t) AS last_t,
                       count(*) FILTER (WHERE type = '{at.PRICING_PAGE_VISIT}') AS visits
                FROM act a {_bucket('a.t')} GROUP BY ALL)""",
            f"""act_cum AS (
                SELECT g.{key}, g.as_of, max(ab.last_t) OVER w AS last_t, sum(ab.visits) OVER w AS visits
                FROM (SELECT l.{key}, s.as_of FROM {LEADS.name} l CROSS JOIN snap s) g
                LEFT JOIN act_b ab ON g.{key} = ab.{key} AND g.as_of = ab.as_of
                WINDOW w AS (PARTITION BY g.{key} ORDER BY g.as_of
                             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))""",
        ]
        joins += [
            f"LEFT JOIN act_win aw ON b.{key} = aw.{key} AND b.as_of = aw.as_of",
            f"LEFT JOIN act_cum al ON b.{key} = al.{key} AND b.as_of = al.as_of",
            f"LEFT JOIN demo d ON b.{key} = d.{key} AND d.t < b.as_of",
        ]
        for w in LEAD_ACTIVITY_WINDOWS:
            cols.append(f"coalesce(aw.activities_{w}d, 0) AS activities_{w}d")
            cols += [f"coalesce(aw.{t.value}_{w}d, 0) AS {t.value}_{w}d" for t in at]
        short, long = LEAD_ACTIVITY_WINDOWS[0], LEAD_ACTIVITY_WINDOWS[-1]
        cols += [
            f"{_days_since('al.last_t')} AS days_since_last_activity",
            "CASE WHEN d.t IS NULL THEN 0 ELSE 1 END AS demo_requested",
            "coalesce(al.visits, 0) AS pricing_page_visits",
            (f"coalesce(aw.activities_{short}d, 0) / {short}"
            f" - coalesce(aw.activities_{long}d, 0) / {long} AS engagement_velocity"),
        ]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(cols)} FROM base b {' '.join(joins)}"


def product_sql(ctx: SqlContext) -> str:
    """Product snapshots: catalogue data (with a products table) and popularity from orders."""
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
        # Each buyer's first and second purchase time of the product (equal when two
        # orders share the first time). MATERIALIZED is a DuckDB planning hint (Spark's
        # transpilation drops it).
        """pairs AS MATERIALIZED (
            SELECT product_id, customer_id, min(t) AS first_t, min(t) FILTER (WHERE n = 2) AS second_t
            FROM (SELECT product_id, customer_id, t,
                         row_number() OVER (PARTITION BY product_id, customer_id ORDER BY t) AS n
                  FROM ord) x
            GROUP BY ALL)""",
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


#: Helper columns of ``value_sql``: the peer's summary statistics (``features.peer``),
#: consumed by the build and not written to the value table.
PEER_SUMMARY = ("peer_frequency", "peer_recency", "peer_T", "peer_monetary")


def value_sql(ctx: SqlContext) -> str:
    """Customer-value snapshots: one row per customer signed up before ``as_of`` (the rows
    of ``customer_sql``, so a service joining both views finds every customer in both).

    Columns: the raw RFM values (scored later by ``features.rfm``), the run-rate and the
    cost-to-serve counts over ``VALUE_WINDOW`` days, and the peer's summary statistics
    (``PEER_SUMMARY``) in days, as ``pymc_marketing.clv.utils.rfm_summary`` defines them
    for the orders strictly before ``as_of``: orders are grouped by UTC day;
    ``peer_frequency`` = purchase days after the first, ``peer_recency`` = last purchase
    day - first, ``peer_T`` = the last day before ``as_of`` - first, ``peer_monetary`` =
    mean amount of the repeat purchase days. Amounts <= 0 (a free item, a credit) are left
    out of the amount: a repeat day with no positive amount counts as a purchase (BG/NBD)
    but not in the mean (Gamma-Gamma needs positive amounts).

    The lifetime sums use the snapshot buckets of ``customer_sql``: each order goes to the
    first snapshot after it; per (customer, bucket) sums accumulate over the snapshots.
    The first purchase day is the same at every snapshot that sees any order, so "repeat
    day" is decided once per customer.
    """
    o, i = ORDERS.name, INTERACTIONS.name
    key = JOIN_KEYS["customer"]
    w = VALUE_WINDOW
    day = f"floor(t / {DAY_US})::BIGINT"
    ctes = [
        f"""grid AS (SELECT c.{key}, s.as_of FROM {CUSTOMERS.name} c CROSS JOIN snap s)""",
        f"""ord AS (SELECT {key}, epoch_us(ordered_at) AS t, amount FROM {o})""",
        f"""ord_b AS (
            SELECT o.{key}, s.as_of, count(*) AS n, sum(o.amount) AS amount, max(o.t) AS last_t
            FROM ord o {_bucket('o.t')} GROUP BY ALL)""",
        f"""spend AS (
            SELECT o.{key}, s.as_of, sum(o.amount) AS spend
            FROM ord o JOIN snap s ON o.t < s.as_of AND {_window('o.t', w)} GROUP BY ALL)""",
        # Purchases for the peer, by UTC day, each order in its snapshot bucket.
        f"""buy AS (
            SELECT b.{key}, s.as_of AS bucket, b.day, b.amount, b.day > f.first_day AS repeat
            FROM (SELECT {key}, t, {day} AS day, amount FROM ord) b
            JOIN (SELECT {key}, min({day}) AS first_day FROM ord GROUP BY 1) f USING ({key})
            {_bucket('b.t')})""",
        # A purchase day counts from the bucket of its first order, and for the mean amount
        # from the bucket of its first positive one (a snapshot may fall inside a day).
        f"""buy_days AS (
            SELECT {key}, day, bool_or(repeat) AS repeat, min(bucket) AS bucket,
                   min(bucket) FILTER (WHERE amount > 0) AS paid_bucket
            FROM buy GROUP BY {key}, day)""",
        f"""buy_b AS (
            SELECT {key}, bucket AS as_of,
                   sum(amount) FILTER (WHERE repeat AND amount > 0) AS repeat_amount,
                   min(day) AS first_day, max(day) AS last_day
            FROM buy GROUP BY ALL)""",
        f"""days_b AS (
            SELECT {key}, bucket AS as_of, count(*) FILTER (WHERE repeat) AS repeat_days
            FROM buy_days GROUP BY ALL)""",
        f"""paid_b AS (
            SELECT {key}, paid_bucket AS as_of, count(*) FILTER (WHERE repeat) AS paid_days
            FROM buy_days WHERE paid_bucket IS NOT NULL GROUP BY ALL)""",
    ]
    cum_cols = [
        "sum(ob.n) OVER w AS orders_total",
        "sum(ob.amount) OVER w AS revenue_total",
        "max(ob.last_t) OVER w AS last_order",
        "sum(db.repeat_days) OVER w AS repeat_days",
        "sum(pd.paid_days) OVER w AS paid_days",
        "sum(bb.repeat_amount) OVER w AS repeat_amount",
        "min(bb.first_day) OVER w AS first_day",
        "max(bb.last_day) OVER w AS last_day",
    ]
    joins = [
        f"JOIN cum cu ON b.{key} = cu.{key} AND b.as_of = cu.as_of",
        f"LEFT JOIN spend sp ON b.{key} = sp.{key} AND b.as_of = sp.as_of",
    ]
    last_day = f"floor((b.as_of - 1) / {DAY_US})::BIGINT"
    # The two amounts that feed a ranking (RFM's monetary score, whose ties share a score)
    # and a fit (the peer) are rounded to 1e-6 before dividing: a sum of doubles depends
    # on the order of its terms, which no engine fixes (DuckDB's varies run to run), and
    # the last bit would otherwise decide a tie or move the optimizer's stopping point.
    cols = [
        f"b.{key}",
        "b.as_of",
        f"{_days_since('cu.last_order')} AS rfm_recency_days",
        "coalesce(cu.orders_total, 0) AS rfm_frequency",
        "round(cu.revenue_total, 6) / nullif(cu.orders_total, 0) AS rfm_monetary",
        f"coalesce(sp.spend, 0) AS value_spend_{w}",
        "CASE WHEN cu.first_day IS NULL THEN NULL ELSE coalesce(cu.repeat_days, 0) END AS peer_frequency",
        "(cu.last_day - cu.first_day)::DOUBLE AS peer_recency",
        f"({last_day} - cu.first_day)::DOUBLE AS peer_T",
        "round(cu.repeat_amount, 6) / nullif(cu.paid_days, 0) AS peer_monetary",
    ]
    if ctx.has(i):
        it = InteractionType
        ctes.append(
            f"""care AS (
                SELECT e.{key}, s.as_of,
                       {_typed(it.SUPPORT_TICKET, 'e.t', w)} AS tickets,
                       {_typed(it.COMPLAINT, 'e.t', w)} AS complaints
                FROM (SELECT {key}, epoch_us(occurred_at) AS t, type FROM {i}
                      WHERE type IN ('{it.SUPPORT_TICKET}', '{it.COMPLAINT}')) e
                JOIN snap s ON e.t < s.as_of AND {_window('e.t', w)} GROUP BY ALL)"""
        )
        joins.append(f"LEFT JOIN care ca ON b.{key} = ca.{key} AND b.as_of = ca.as_of")
        cols += [
            f"coalesce(ca.tickets, 0) AS value_tickets_{w}",
            f"coalesce(ca.complaints, 0) AS value_complaints_{w}",
        ]
    ctes += [
        f"""cum AS (
            SELECT g.{key}, g.as_of, {", ".join(cum_cols)}
            FROM grid g
            LEFT JOIN ord_b ob ON g.{key} = ob.{key} AND g.as_of = ob.as_of
            LEFT JOIN buy_b bb ON g.{key} = bb.{key} AND g.as_of = bb.as_of
            LEFT JOIN days_b db ON g.{key} = db.{key} AND g.as_of = db.as_of
            LEFT JOIN paid_b pd ON g.{key} = pd.{key} AND g.as_of = pd.as_of
            WINDOW w AS (PARTITION BY g.{key} ORDER BY g.as_of
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))""",
        f"""base AS (
            SELECT c.{key}, s.as_of FROM {CUSTOMERS.name} c JOIN snap s ON epoch_us(c.signup_at) < s.as_of)""",
    ]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(cols)} FROM base b {' '.join(joins)}"
