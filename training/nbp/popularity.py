"""Popularity: the baselines of the evaluation and the cold-start fallback.

pop_j = Σ over customers u who bought j of 2 ** (-(T - last purchase of j by u) / half_life),
i.e. distinct buyers, recent ones counting more (the same half-life as the
confidences). Per segment g, the counts are shrunk towards the overall shares so a
small segment does not rank by three purchases:

    segpop_gj = (n_gj + m · share_j) / (N_g + m),   share_j = pop_j / Σ pop

with m = ``SHRINKAGE`` pseudo-buyers. Rows are stored as shares (each row sums to 1).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from training.nbp.interactions import (
    CUSTOMER_ID,
    ORDER_CUSTOMER,
    ORDER_PRODUCT,
    ORDERED_AT,
    SEGMENT,
    UNKNOWN_SEGMENT,
    index_of,
)

SHRINKAGE = 50.0


def popularity_table(orders: pl.DataFrame, customers: pl.DataFrame, product_ids: np.ndarray, as_of: datetime,
                     half_life_days: float) -> tuple[list[str], np.ndarray]:
    """(segments, matrix): row 0 is the overall share of each product, row 1+i segment i's."""
    before = orders.filter(pl.col(ORDERED_AT) < as_of)
    as_of_us = int(as_of.timestamp() * 1_000_000)
    buyers = (
        before.group_by(ORDER_CUSTOMER, ORDER_PRODUCT)
        .agg(pl.col(ORDERED_AT).max().dt.epoch("us").alias("last_us"))
        .with_columns(weight=(2.0 ** (-(as_of_us - pl.col("last_us")) / (86_400e6 * half_life_days))))
        .join(customers.rename({CUSTOMER_ID: ORDER_CUSTOMER}), on=ORDER_CUSTOMER, how="left")
        .with_columns(pl.col(SEGMENT).fill_null(UNKNOWN_SEGMENT))
    )
    col = index_of(buyers[ORDER_PRODUCT], product_ids)
    keep = col >= 0
    weight = buyers["weight"].to_numpy()[keep]
    overall = np.bincount(col[keep], weights=weight, minlength=len(product_ids))
    share = overall / overall.sum() if overall.sum() > 0 else np.full(len(product_ids), 1 / len(product_ids))
    segments = sorted(s for s in customers[SEGMENT].unique().to_list() if s != UNKNOWN_SEGMENT)
    seg_of = buyers[SEGMENT].to_numpy()[keep]
    rows = [share]
    for segment in segments:
        mask = seg_of == segment
        counts = np.bincount(col[keep][mask], weights=weight[mask], minlength=len(product_ids))
        rows.append((counts + SHRINKAGE * share) / (counts.sum() + SHRINKAGE))
    return segments, np.vstack(rows).astype(np.float32)


def popularity_order(scores: np.ndarray) -> np.ndarray:
    """Items from most to least popular; ties to the lower index (deterministic)."""
    return np.argsort(-scores, kind="stable")
