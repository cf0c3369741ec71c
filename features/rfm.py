"""RFM: recency, frequency and monetary scores within each snapshot, and the named segments.

Scores are quantile scores 1..``RFM_LEVELS`` (5: quintiles) computed among the customers
with at least one order before the snapshot; ``RFM_LEVELS`` is best (the most recent, the
most orders, the highest mean order amount). A customer without orders gets null scores
and a null segment.

Ties share a score: a customer's score is ``1 + floor(LEVELS * worse / n)``, where
``worse`` counts the customers of the snapshot with a strictly worse value and ``n`` those
with a value. Equal values never land in different quintiles (``ntile`` over a sort
would split them at random), at the price of uneven quintiles where values repeat: when
half the customers have exactly one order, they all score F = 1 and the next score is 3.

The segment comes from R and FM = round-half-up((F + M) / 2) through ``SEGMENTS``, the one
score-to-segment map (docs/features.md shows it as a table).
"""

from __future__ import annotations

from typing import Final

import polars as pl

from features.catalog import EVENT_TIMESTAMP, RFM_LEVELS


class Segment:
    """The eleven segment names (the values of ``rfm_segment``)."""

    CHAMPIONS: Final = "Champions"
    LOYAL: Final = "Loyal"
    POTENTIAL_LOYALISTS: Final = "Potential loyalists"
    NEW: Final = "New"
    PROMISING: Final = "Promising"
    NEED_ATTENTION: Final = "Need attention"
    ABOUT_TO_SLEEP: Final = "About to sleep"
    AT_RISK: Final = "At risk"
    CANT_LOSE: Final = "Can't lose them"
    HIBERNATING: Final = "Hibernating"
    LOST: Final = "Lost"


S = Segment
#: The score-to-segment map, written once: ``SEGMENTS[r][fm - 1]`` is the segment of
#: recency score r and FM = round-half-up((F + M) / 2). The widely used R x FM grid:
#: recent buyers are new, promising, potential loyalists or champions by how much and
#: how often they buy; the lapsed are at risk (or can't-lose when they were the best),
#: hibernating, or lost when they also bought little.
SEGMENTS: dict[int, tuple[str, str, str, str, str]] = {
    5: (S.NEW, S.POTENTIAL_LOYALISTS, S.POTENTIAL_LOYALISTS, S.CHAMPIONS, S.CHAMPIONS),
    4: (S.PROMISING, S.POTENTIAL_LOYALISTS, S.POTENTIAL_LOYALISTS, S.LOYAL, S.LOYAL),
    3: (S.ABOUT_TO_SLEEP, S.ABOUT_TO_SLEEP, S.NEED_ATTENTION, S.LOYAL, S.LOYAL),
    2: (S.HIBERNATING, S.HIBERNATING, S.AT_RISK, S.AT_RISK, S.CANT_LOSE),
    1: (S.LOST, S.LOST, S.AT_RISK, S.AT_RISK, S.CANT_LOSE),
}
#: Every segment name, in the order of the docs.
SEGMENT_NAMES: tuple[str, ...] = (
    S.CHAMPIONS, S.LOYAL, S.POTENTIAL_LOYALISTS, S.NEW, S.PROMISING, S.NEED_ATTENTION,
    S.ABOUT_TO_SLEEP, S.AT_RISK, S.CANT_LOSE, S.HIBERNATING, S.LOST,
)

#: Input columns (raw values) and output columns (scores, segment) of ``rfm_scores``.
RECENCY, FREQUENCY, MONETARY = "rfm_recency_days", "rfm_frequency", "rfm_monetary"
R, F, M, SEGMENT = "rfm_r", "rfm_f", "rfm_m", "rfm_segment"


def _score(value: pl.Expr, *, higher_is_better: bool, has_orders: pl.Expr, by: str) -> pl.Expr:
    """1 + floor(LEVELS * (customers strictly worse) / (customers with orders)), per ``by``."""
    kept = pl.when(has_orders).then(value)
    # rank("min") = 1 + the number of strictly smaller values (descending: strictly larger).
    worse = kept.rank("min", descending=not higher_is_better).over(by) - 1
    n = kept.count().over(by)
    return (1 + (RFM_LEVELS * worse) // n).cast(pl.Int64)


def _segment_lookup() -> pl.DataFrame:
    rows = [
        (r, fm, name) for r, names in SEGMENTS.items() for fm, name in enumerate(names, start=1)
    ]
    return pl.DataFrame(rows, schema={R: pl.Int64, "_fm": pl.Int64, SEGMENT: pl.String}, orient="row")


def rfm_scores(frame: pl.DataFrame, by: str = EVENT_TIMESTAMP) -> pl.DataFrame:
    """``frame`` with ``rfm_r``, ``rfm_f``, ``rfm_m`` and ``rfm_segment`` added (replaced).

    ``frame`` holds ``by`` (the snapshot), ``rfm_recency_days``, ``rfm_frequency`` and
    ``rfm_monetary``; a row with ``rfm_frequency`` null or 0 has no orders. Row order is kept.
    """
    has_orders = pl.col(FREQUENCY).fill_null(0) > 0
    scored = frame.drop([c for c in (R, F, M, SEGMENT) if c in frame.columns]).with_columns(
        _score(pl.col(RECENCY), higher_is_better=False, has_orders=has_orders, by=by).alias(R),
        _score(pl.col(FREQUENCY), higher_is_better=True, has_orders=has_orders, by=by).alias(F),
        _score(pl.col(MONETARY), higher_is_better=True, has_orders=has_orders, by=by).alias(M),
    )
    fm = (pl.col(F) + pl.col(M) + 1) // 2  # round half up: (F + M) / 2 = 2.5 -> 3
    return (
        scored.with_columns(fm.alias("_fm"))
        .join(_segment_lookup(), on=[R, "_fm"], how="left", maintain_order="left")
        .drop("_fm")
    )
