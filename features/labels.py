"""Label builders (DESIGN.md "Labels"): what happened in the W days after a cutoff.

Each builder returns one row per (entity, cutoff) of the population at risk at
that cutoff, with ``event_timestamp`` = the cutoff and ``label`` in {0, 1}; that
frame is exactly what ``features.training.training_frame`` takes. The label
window is ``[cutoff, cutoff + W)``; features only see events ``< cutoff``.

Cutoffs whose window reaches past the lake's last event are dropped (with a
warning): their labels would be censored, i.e. "no order yet" would read as churn.

Vectorized polars throughout: the cutoffs are a small frame cross-joined to the
table rows, never a Python loop over entities.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import polars as pl

from crmdata.contract import (
    CHURN_LABELS,
    LEAD_LABELS,
    LEADS,
    ORDERS,
    PRODUCTS,
    SUBSCRIPTIONS,
    TIMESTAMP,
)
from crmdata.errors import CrmscoreError
from crmdata.lake import last_event, read_table
from crmdata.times import as_utc
from features.catalog import EVENT_TIMESTAMP, JOIN_KEYS

log = logging.getLogger(__name__)

LABEL = "label"
CUTOFF = EVENT_TIMESTAMP
CHURN_LOOKBACK_DAYS = 365

ChurnMode = Literal["auto", "subscription", "transactional"]


def _cutoffs(lake: Path, cutoffs: Sequence[datetime], window_days: int) -> pl.DataFrame:
    """The cutoffs whose whole label window is observed in the lake, as a one-column frame."""
    if window_days <= 0:
        raise CrmscoreError(f"the label window must be positive, got {window_days} days")
    end = last_event(lake)
    wanted = sorted({as_utc(c) for c in cutoffs})
    kept = [c for c in wanted if c + timedelta(days=window_days) <= end]
    if len(kept) < len(wanted):
        log.warning(
            "dropped %d cutoffs whose %d-day label window ends after the lake's last event (%s)",
            len(wanted) - len(kept),
            window_days,
            f"{end:%Y-%m-%d}",
        )
    return pl.DataFrame({CUTOFF: kept}, schema={CUTOFF: TIMESTAMP})


def _require(lake: Path, name: str, why: str) -> pl.DataFrame:
    frame = read_table(lake, name)
    if frame is None:
        raise CrmscoreError(f"{lake}: {why} needs the {name} table, which this lake does not have")
    return frame


# --- populations: who is at risk at a cutoff ----------------------------------------
# The label builders and batch scoring (pipelines/scoring) share these predicates,
# so the rows a model is scored on are the rows it was trained and evaluated on.


def _subscription_active(at: str) -> pl.Expr:
    """A subscription is active at ``at``: started before it, not ended before it."""
    return (pl.col("started_at") < pl.col(at)) & (
        pl.col("ended_at").is_null() | (pl.col("ended_at") >= pl.col(at))
    )


def _ordered_in_lookback(lookback_days: int) -> pl.Expr:
    """An order in ``[cutoff - lookback, cutoff)``."""
    t, c = pl.col("ordered_at"), pl.col(CUTOFF)
    return (t >= c - pl.duration(days=lookback_days)) & (t < c)


def _lead_open(at: str) -> pl.Expr:
    """A lead is open at ``at``: created before it, neither converted nor lost before it."""
    c, conv, lost = pl.col(at), pl.col("converted_at"), pl.col("lost_at")
    return (pl.col("created_at") < c) & (conv.is_null() | (conv >= c)) & (lost.is_null() | (lost >= c))


def churn_population(
    lake: Path, as_of: datetime, *, mode: ChurnMode = "auto", lookback_days: int = CHURN_LOOKBACK_DAYS
) -> pl.DataFrame:
    """The customers churn is predicted for at ``as_of`` (one ``customer_id`` column,
    sorted): active subscribers (subscription mode) or customers who ordered in the
    look-back (transactional mode). Unlike the labels, no window has to fit after it."""
    key = JOIN_KEYS["customer"]
    if mode == "auto":
        mode = "subscription" if read_table(lake, SUBSCRIPTIONS.name, [key]) is not None else "transactional"
    at = pl.lit(as_utc(as_of), dtype=TIMESTAMP).alias(CUTOFF)
    if mode == "subscription":
        subs = _require(lake, SUBSCRIPTIONS.name, "subscription churn").select(key, "started_at", "ended_at")
        return subs.with_columns(at).filter(_subscription_active(CUTOFF)).select(key).unique().sort(key)
    orders = _require(lake, ORDERS.name, "transactional churn").select(key, "ordered_at")
    return (
        orders.lazy().with_columns(at).filter(_ordered_in_lookback(lookback_days))
        .select(key).unique().sort(key).collect()
    )


def open_leads(lake: Path, as_of: datetime) -> pl.DataFrame:
    """The leads open at ``as_of`` (one ``lead_id`` column, sorted): lead scoring's population."""
    key = JOIN_KEYS["lead"]
    leads = _require(lake, LEADS.name, "lead scoring").select(key, "created_at", "converted_at", "lost_at")
    at = pl.lit(as_utc(as_of), dtype=TIMESTAMP).alias(CUTOFF)
    return leads.with_columns(at).filter(_lead_open(CUTOFF)).select(key).unique().sort(key)


def churn_labels(
    lake: Path,
    cutoffs: Sequence[datetime],
    *,
    window_days: int,
    mode: ChurnMode = "auto",
    lookback_days: int = CHURN_LOOKBACK_DAYS,
) -> pl.DataFrame:
    """Churn labels; ``auto`` uses subscriptions when the lake has them, else orders."""
    if mode == "auto":
        mode = "subscription" if read_table(lake, SUBSCRIPTIONS.name, ["customer_id"]) is not None else "transactional"
    if mode == "subscription":
        return churn_labels_subscription(lake, cutoffs, window_days=window_days)
    return churn_labels_transactional(
        lake, cutoffs, window_days=window_days, lookback_days=lookback_days
    )


def churn_labels_subscription(
    lake: Path, cutoffs: Sequence[datetime], *, window_days: int
) -> pl.DataFrame:
    """Population: customers with a subscription active at the cutoff.
    Label 1: none of their subscriptions is active W days later, i.e. what was
    active ended within the window and was not replaced (a plan change is not churn).

    Active at t: ``started_at < t`` and (``ended_at`` is null or ``ended_at >= t``).
    """
    key = JOIN_KEYS["customer"]
    subs = _require(lake, SUBSCRIPTIONS.name, "subscription churn").select(
        key, "started_at", "ended_at"
    )
    grid = _cutoffs(lake, cutoffs, window_days).with_columns(
        (pl.col(CUTOFF) + pl.duration(days=window_days)).alias("_horizon")
    )
    return (
        subs.join(grid, how="cross")
        .group_by(key, CUTOFF)
        .agg(
            _subscription_active(CUTOFF).any().alias("_now"),
            _subscription_active("_horizon").any().alias("_later"),
        )
        .filter(pl.col("_now"))
        .select(key, CUTOFF, (~pl.col("_later")).cast(pl.Int8).alias(LABEL))
        .sort(CUTOFF, key)
    )


def churn_labels_transactional(
    lake: Path,
    cutoffs: Sequence[datetime],
    *,
    window_days: int,
    lookback_days: int = CHURN_LOOKBACK_DAYS,
) -> pl.DataFrame:
    """Population: customers with an order in ``[cutoff - lookback, cutoff)``.
    Label 1: no order in ``[cutoff, cutoff + W)``."""
    key = JOIN_KEYS["customer"]
    orders = _require(lake, ORDERS.name, "transactional churn").select(key, "ordered_at")
    grid = _cutoffs(lake, cutoffs, window_days)
    t, c = pl.col("ordered_at"), pl.col(CUTOFF)
    window = pl.duration(days=window_days)
    lookback = pl.duration(days=lookback_days)
    return (
        orders.lazy()
        .join(grid.lazy(), how="cross")
        .filter((t >= c - lookback) & (t < c + window))
        .group_by(key, CUTOFF)
        .agg(_ordered_in_lookback(lookback_days).any().alias("_active"), (t >= c).any().alias("_bought"))
        .filter(pl.col("_active"))
        .select(key, CUTOFF, (~pl.col("_bought")).cast(pl.Int8).alias(LABEL))
        .sort(CUTOFF, key)
        .collect()
    )


def lead_conversion_labels(
    lake: Path, cutoffs: Sequence[datetime], *, window_days: int
) -> pl.DataFrame:
    """Population: leads open at the cutoff (created before it, neither converted nor
    lost before it). Label 1: converted in ``[cutoff, cutoff + W)``."""
    key = JOIN_KEYS["lead"]
    leads = _require(lake, LEADS.name, "lead conversion").select(
        key, "created_at", "converted_at", "lost_at"
    )
    grid = _cutoffs(lake, cutoffs, window_days)
    c = pl.col(CUTOFF)
    conv = pl.col("converted_at")
    return (
        leads.join(grid, how="cross")
        .filter(_lead_open(CUTOFF))
        .select(
            key,
            CUTOFF,
            (conv.is_not_null() & (conv < c + pl.duration(days=window_days)))
            .cast(pl.Int8)
            .alias(LABEL),
        )
        .sort(CUTOFF, key)
    )


def next_product_labels(
    lake: Path, cutoffs: Sequence[datetime], *, window_days: int
) -> pl.DataFrame:
    """The products each customer buys in ``[cutoff, cutoff + W)``: one row per
    (customer, cutoff, product) with ``label`` 1. A product the customer already
    owned before the cutoff is excluded when it is not repeatable (products table
    ``is_repeatable``; without a products table every product counts as repeatable).

    Negatives are the training job's choice (sampled candidates), so none are made here.
    """
    key, pkey = JOIN_KEYS["customer"], JOIN_KEYS["product"]
    orders = _require(lake, ORDERS.name, "next products").select(key, pkey, "ordered_at")
    orders = orders.filter(pl.col(pkey).is_not_null())
    if orders.is_empty():
        raise CrmscoreError(f"{lake}: next products needs orders with product_id; this lake has none")
    products = read_table(lake, PRODUCTS.name, [pkey, "is_repeatable"])
    grid = _cutoffs(lake, cutoffs, window_days)
    t, c = pl.col("ordered_at"), pl.col(CUTOFF)
    pairs = orders.lazy().join(grid.lazy(), how="cross")
    bought = (
        pairs.filter((t >= c) & (t < c + pl.duration(days=window_days)))
        .select(key, CUTOFF, pkey)
        .unique()
        .collect()
    )
    # Only what was bought in a window can be excluded, so "owned" is checked for those.
    owned = (
        orders.lazy()
        .join(bought.lazy().select(key, CUTOFF).unique(), on=key)
        .filter(t < c)
        .select(key, CUTOFF, pkey)
        .unique()
        .collect()
    )
    if products is not None:
        one_off = products.filter(~pl.col("is_repeatable")).select(pkey)
        owned_one_off = owned.join(one_off, on=pkey, how="semi")
        bought = bought.join(owned_one_off, on=[key, CUTOFF, pkey], how="anti")
    return bought.with_columns(pl.lit(1, pl.Int8).alias(LABEL)).sort(CUTOFF, key, pkey)


def value_labels(lake: Path, cutoffs: Sequence[datetime], *, window_days: int) -> pl.DataFrame:
    """Customer value: one row per customer signed up before the cutoff (``signup_at < cutoff``),
    ``label`` = the amount of their orders in ``[cutoff, cutoff + W)`` (0.0 without one), a float.

    Amounts are taken as they are: the contract admits no negative amount (returns are netted
    before import), and an order of amount 0 adds nothing.
    """
    key = JOIN_KEYS["customer"]
    customers = _require(lake, "customers", "customer value").select(key, "signup_at")
    orders = _require(lake, ORDERS.name, "customer value").select(key, "ordered_at", "amount")
    grid = _cutoffs(lake, cutoffs, window_days)
    t, c = pl.col("ordered_at"), pl.col(CUTOFF)
    population = customers.lazy().join(grid.lazy(), how="cross").filter(pl.col("signup_at") < c).select(key, CUTOFF)
    spend = (
        orders.lazy()
        .join(grid.lazy(), how="cross")
        .filter((t >= c) & (t < c + pl.duration(days=window_days)))
        .group_by(key, CUTOFF)
        .agg(pl.col("amount").sum().cast(pl.Float64).alias(LABEL))
    )
    return (
        population.join(spend, on=[key, CUTOFF], how="left")
        .with_columns(pl.col(LABEL).fill_null(0.0))
        .sort(CUTOFF, key)
        .collect()
    )


#: Label tables you bring, and the outcome column of each (crmdata/contract.py).
BROUGHT_LABELS: dict[str, str] = {CHURN_LABELS.name: "churned", LEAD_LABELS.name: "converted"}


def brought_labels(lake: Path, table: str, *, window_days: int, as_of: datetime | None = None) -> pl.DataFrame | None:
    """The lake's own label table as a labels frame (key, ``event_timestamp`` = its ``as_of``,
    ``label``), or None when the lake has no such table.

    Trained as of T, a row counts only if its outcome was known by T: its ``as_of`` plus
    the label window ends by T, as for derived labels.
    """
    frame = read_table(lake, table)
    if frame is None:
        return None
    key = frame.columns[0]
    labels = frame.select(key, pl.col("as_of").alias(CUTOFF), pl.col(BROUGHT_LABELS[table]).cast(pl.Int8).alias(LABEL))
    if as_of is not None:
        labels = labels.filter(pl.col(CUTOFF) + pl.duration(days=window_days) <= as_utc(as_of))
    return labels.sort(CUTOFF, key)
