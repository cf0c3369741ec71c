"""Turn the simulators' arrays into contract tables with exact dtypes.

Small tables (customers, products, subscriptions, leads) become polars frames,
selected and cast to ``Table.polars_schema()`` plus their custom attributes, so
a mismatch fails here rather than in a consumer. The big ones (orders,
interactions, lead activities) are streamed to parquet in row groups (see
``crmdata.synth.parquet``). Column names come from ``crmdata.contract``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from crmdata.contract import (
    COMPANY_SIZES,
    CUSTOM_ATTRIBUTE_DTYPES,
    CUSTOMERS,
    INTERACTIONS,
    JOB_SENIORITIES,
    LEAD_ACTIVITIES,
    LEADS,
    ORDERS,
    PRODUCTS,
    SUBSCRIPTIONS,
    AttributeKind,
    Table,
)
from crmdata.synth import parquet, vocab
from crmdata.synth.activity import INTERACTION_TYPES, CustomerHistory
from crmdata.synth.catalog import Catalog
from crmdata.synth.config import WEEK_S, Calendar
from crmdata.synth.customers import Roster
from crmdata.synth.epochs import NEVER
from crmdata.synth.leads import LeadWorld

#: The custom attributes this generator declares in the lake manifest.
LOYALTY_TIER = "loyalty_tier"
ANNUAL_REVENUE = "annual_revenue_musd"
CUSTOM_ATTRIBUTES: dict[str, dict[str, AttributeKind]] = {
    CUSTOMERS.name: {LOYALTY_TIER: "categorical"},
    LEADS.name: {ANNUAL_REVENUE: "numeric"},
}

ID_PREFIX = {CUSTOMERS.name: "C", PRODUCTS.name: "P", ORDERS.name: "O", SUBSCRIPTIONS.name: "S", LEADS.name: "L"}


def make_ids(table: str, n: int) -> parquet.FixedIds:
    """Ids "C0000001", "C0000002", …: a prefix and a zero-padded 1-based number."""
    return parquet.FixedIds(ID_PREFIX[table], n)


def id_series(ids: parquet.FixedIds) -> pl.Series:
    return pl.Series(ids.range(0, ids.n)).cast(pl.String)


def labels(values: tuple[str, ...], index: np.ndarray) -> pl.Series:
    """Category strings from an index array (a gather from the small vocabulary)."""
    return pl.Series(values, dtype=pl.String).gather(pl.Series(index.astype(np.int64, copy=False)))


def timestamps(calendar: Calendar, seconds: np.ndarray, missing: int | None = None) -> pl.Series:
    """UTC microsecond timestamps from simulator seconds; ``missing`` marks nulls."""
    if missing is None:
        return pl.Series(calendar.to_us(seconds), dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
    absent = seconds == missing
    us = pl.Series(calendar.to_us(np.where(absent, 0, seconds)), dtype=pl.Int64)
    return us.scatter(np.flatnonzero(absent), None).cast(pl.Datetime("us", "UTC"))


def _conform(frame: pl.DataFrame, table: Table) -> pl.DataFrame:
    schema = dict(table.polars_schema())
    for name, kind in CUSTOM_ATTRIBUTES.get(table.name, {}).items():
        schema[name] = CUSTOM_ATTRIBUTE_DTYPES[kind]
    return frame.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])


def customers_frame(roster: Roster, ids: pl.Series, calendar: Calendar, rng: np.random.Generator) -> pl.DataFrame:
    """The customers table with fake PII, built from small name arrays (no per-row work)."""
    n = roster.n
    first = labels(vocab.FIRST_NAMES, rng.integers(0, len(vocab.FIRST_NAMES), n))
    last = labels(vocab.LAST_NAMES, rng.integers(0, len(vocab.LAST_NAMES), n))
    domain = labels(vocab.EMAIL_DOMAINS, rng.integers(0, len(vocab.EMAIL_DOMAINS), n))
    phone_cc = labels(vocab.COUNTRY_PHONE, roster.country)
    digits = pl.Series(rng.integers(100_000_000, 999_999_999, n, dtype=np.int64)).cast(pl.String)
    frame = pl.DataFrame(
        {
            "customer_id": ids,
            "signup_at": timestamps(calendar, roster.signup_s),
            "country": labels(vocab.COUNTRY_CODES, roster.country),
            "segment": labels(vocab.SEGMENTS, roster.segment),
            "industry": labels(vocab.INDUSTRIES, roster.industry),
            "acquisition_channel": labels(vocab.CHANNELS, roster.channel),
            "_first": first,
            "_last": last,
            "_domain": domain,
            "_cc": phone_cc,
            "_digits": digits,
            LOYALTY_TIER: labels(vocab.LOYALTY_TIERS, roster.loyalty_tier),
        }
    ).with_columns(
        name=pl.concat_str("_first", pl.lit(" "), "_last"),
        # The customer number keeps e-mails unique; spaces ("de Vries") are dropped.
        email=pl.concat_str(
            pl.col("_first").str.to_lowercase(),
            pl.lit("."),
            pl.col("_last").str.to_lowercase().str.replace_all(" ", ""),
            pl.col("customer_id").str.slice(1).cast(pl.Int64).cast(pl.String),
            pl.lit("@"),
            "_domain",
        ),
        phone=pl.concat_str(pl.lit("+"), "_cc", pl.lit(" "), "_digits"),
    )
    return _conform(frame, CUSTOMERS)


def products_frame(catalog: Catalog, ids: pl.Series) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "product_id": ids,
            "name": catalog.name,
            "category": labels(tuple(c for c, _ in vocab.CATEGORIES), catalog.category),
            "price": catalog.price,
            "is_repeatable": catalog.repeatable,
        }
    )
    return _conform(frame, PRODUCTS)


def subscriptions_frame(
    roster: Roster, history: CustomerHistory, customer_ids: pl.Series, calendar: Calendar
) -> pl.DataFrame:
    holders = np.flatnonzero(roster.subscribed)
    frame = pl.DataFrame(
        {
            "subscription_id": id_series(make_ids(SUBSCRIPTIONS.name, holders.size)),
            "customer_id": customer_ids.gather(pl.Series(holders)),
            "plan": labels(vocab.PLAN_NAMES, roster.plan[holders]),
            "monthly_price": roster.monthly_price[holders],
            "started_at": timestamps(calendar, roster.signup_s[holders]),
            "ended_at": timestamps(calendar, history.subscription_end_s[holders], missing=NEVER),
        }
    )
    return _conform(frame, SUBSCRIPTIONS)


def leads_frame(
    leads: LeadWorld, lead_ids: pl.Series, lead_customer: np.ndarray, customer_ids: pl.Series, calendar: Calendar
) -> pl.DataFrame:
    """``lead_customer``: roster index of each lead's customer, -1 when not converted."""
    unconverted = lead_customer < 0
    customer = customer_ids.gather(pl.Series(np.where(unconverted, 0, lead_customer)))
    frame = pl.DataFrame(
        {
            "lead_id": lead_ids,
            "created_at": timestamps(calendar, leads.created_s),
            "source": labels(vocab.LEAD_SOURCES, leads.source),
            "country": labels(vocab.COUNTRY_CODES, leads.country),
            "industry": labels(vocab.INDUSTRIES, leads.industry),
            "company_size": labels(COMPANY_SIZES, leads.company_size),
            "job_seniority": labels(JOB_SENIORITIES, leads.job_seniority),
            "converted_at": timestamps(calendar, leads.converted_s, missing=NEVER),
            "lost_at": timestamps(calendar, leads.lost_s, missing=NEVER),
            "customer_id": customer.scatter(np.flatnonzero(unconverted), None),
            ANNUAL_REVENUE: leads.annual_revenue_musd,
        }
    )
    return _conform(frame, LEADS)


def week_time_order(seconds: np.ndarray) -> np.ndarray:
    """Permutation that sorts events by time within each week (they come in week order)."""
    week = seconds // WEEK_S
    bounds = np.flatnonzero(np.r_[True, week[1:] != week[:-1], True]) if week.size else np.zeros(1, np.int64)
    order = np.empty(seconds.size, dtype=np.int64)
    for lo, hi in itertools.pairwise(bounds):
        order[lo:hi] = lo + np.argsort(seconds[lo:hi], kind="stable")
    return order


def write_orders(
    path: Path,
    customer: np.ndarray,
    seconds: np.ndarray,
    product: np.ndarray,
    quantity: np.ndarray,
    amount: np.ndarray,
    customer_ids: parquet.FixedIds,
    product_ids: parquet.FixedIds,
    calendar: Calendar,
) -> int:
    """Orders in time order; order ids follow that order."""
    order = week_time_order(seconds)
    names = ORDERS.column_names
    order_ids = make_ids(ORDERS.name, customer.size)
    product_vocabulary = product_ids.range(0, product_ids.n).to_pylist()  # a few hundred ids

    def build(lo: int, hi: int) -> dict[str, pa.Array]:
        rows = order[lo:hi]
        columns = (
            order_ids.range(lo, hi),
            customer_ids.take(customer[rows]),
            parquet.categories(product_vocabulary, product[rows]),
            parquet.timestamps(calendar.to_us(seconds[rows])),
            pa.array(quantity[rows], type=pa.int64()),
            pa.array(amount[rows], type=pa.float64()),
        )
        return dict(zip(names, columns, strict=True))

    return parquet.write_chunked(path, ORDERS, customer.size, build, dictionary=["product_id"])


def write_interactions(path: Path, history: CustomerHistory, customer_ids: parquet.FixedIds, calendar: Calendar) -> int:
    """Interactions in week order (within a week, grouped by type)."""
    names = INTERACTIONS.column_names

    def build(lo: int, hi: int) -> dict[str, pa.Array]:
        columns = (
            customer_ids.take(history.interaction_customer[lo:hi]),
            parquet.timestamps(calendar.to_us(history.interaction_s[lo:hi])),
            parquet.categories(INTERACTION_TYPES, history.interaction_type[lo:hi]),
            parquet.floats(history.interaction_value[lo:hi]),
        )
        return dict(zip(names, columns, strict=True))

    return parquet.write_chunked(path, INTERACTIONS, history.interaction_s.size, build, dictionary=["type"])


def write_lead_activities(path: Path, leads: LeadWorld, lead_ids: parquet.FixedIds, calendar: Calendar) -> int:
    """Lead activities in week order."""
    names = LEAD_ACTIVITIES.column_names

    def build(lo: int, hi: int) -> dict[str, pa.Array]:
        columns = (
            lead_ids.take(leads.activity_lead[lo:hi]),
            parquet.timestamps(calendar.to_us(leads.activity_s[lo:hi])),
            parquet.categories(leads.activity_types, leads.activity_type[lo:hi]),
        )
        return dict(zip(names, columns, strict=True))

    return parquet.write_chunked(path, LEAD_ACTIVITIES, leads.activity_s.size, build, dictionary=["type"])
