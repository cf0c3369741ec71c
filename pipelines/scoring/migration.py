"""Tier migrations: how each customer's value tier moved since the previous ``score clv`` run.

``crmscore score clv`` writes, beside the ``clv`` score table, a ``clv_migration``
table (same layout: one ``as_of_date=`` partition per scoring date, swapped in
atomically) with one row per customer who had a tier in either run:

* ``upgraded`` / ``downgraded`` / ``same``: a tier in both runs (A is best, D worst);
* ``new``: a tier now, none in the previous run (not scored then, or no features);
* ``lost``: a tier in the previous run, none now (left the population, or no features).

"The previous run" is the newest ``clv`` partition dated strictly before this one,
so a rerun of the same date compares against the same run and writes the same table
(idempotent); the first run has no previous one and every customer is ``new``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.times import as_utc
from pipelines.scoring.table import PARTITION_KEY, partitions

#: The migration table's directory under the workspace's scores (beside ``clv``).
MIGRATION_TABLE = "clv_migration"
TIER_BEFORE, TIER_AFTER, MOVEMENT, PREVIOUS_AS_OF = "tier_before", "tier_after", "movement", "previous_as_of"
#: Every movement, in the order summaries list them.
MOVEMENTS: tuple[str, ...] = ("upgraded", "downgraded", "same", "new", "lost")


def tier_migration(before: pl.DataFrame | None, after: pl.DataFrame, key: str, tier: str,
                   tiers: list[str]) -> pl.DataFrame:
    """``key, tier_before, tier_after, movement`` per customer with a tier in either frame,
    sorted by ``key``. ``tiers`` lists the tiers best first; ``before`` None (no previous
    run) makes everyone with a tier ``new``. A null tier is "no tier"."""
    rank = {t: i for i, t in enumerate(tiers)}
    frames = {"after": after} if before is None else {"before": before, "after": after}
    for name, frame in frames.items():
        values = frame.get_column(tier).drop_nulls()
        unknown = values.filter(~values.is_in(list(rank)))
        if unknown.len():
            raise CrmscoreError(f"{MIGRATION_TABLE} ({name} run): column {tier}: {unknown.len()} values outside "
                                f"{'/'.join(tiers)} (e.g. {unknown.head(1).item()!r})")
        if frame.get_column(key).is_duplicated().any():
            raise CrmscoreError(f"{MIGRATION_TABLE} ({name} run): column {key}: "
                                f"{int(frame.get_column(key).is_duplicated().sum())} rows share an id; "
                                "a score table holds one row per customer")
    old = (pl.DataFrame(schema={key: pl.String, TIER_BEFORE: pl.String}) if before is None
           else before.select(pl.col(key).cast(pl.String), pl.col(tier).cast(pl.String).alias(TIER_BEFORE)))
    new = after.select(pl.col(key).cast(pl.String), pl.col(tier).cast(pl.String).alias(TIER_AFTER))
    ranks = pl.DataFrame({"_t": list(rank), "_r": list(rank.values())}, schema={"_t": pl.String, "_r": pl.Int64})
    joined = (old.filter(pl.col(TIER_BEFORE).is_not_null())
              .join(new.filter(pl.col(TIER_AFTER).is_not_null()), on=key, how="full", coalesce=True))
    before_rank = pl.col(TIER_BEFORE).replace_strict(ranks["_t"], ranks["_r"], default=None)
    after_rank = pl.col(TIER_AFTER).replace_strict(ranks["_t"], ranks["_r"], default=None)
    movement = (pl.when(pl.col(TIER_BEFORE).is_null()).then(pl.lit("new"))
                .when(pl.col(TIER_AFTER).is_null()).then(pl.lit("lost"))
                .when(after_rank < before_rank).then(pl.lit("upgraded"))
                .when(after_rank > before_rank).then(pl.lit("downgraded"))
                .otherwise(pl.lit("same")))
    return joined.with_columns(movement.alias(MOVEMENT)).select(key, TIER_BEFORE, TIER_AFTER, MOVEMENT).sort(key)


def movement_counts(migration: pl.DataFrame) -> dict[str, int]:
    """Customers per movement, every movement listed (zeros too), in ``MOVEMENTS`` order."""
    counts = dict(migration.get_column(MOVEMENT).value_counts().iter_rows())
    return {m: int(counts.get(m, 0)) for m in MOVEMENTS}


def previous_partition(scores: Path, task: str, as_of: datetime) -> Path | None:
    """The task's newest partition dated strictly before ``as_of`` (the previous run), or None."""
    current = f"{PARTITION_KEY}={as_utc(as_of):%Y-%m-%d}"
    older = [p for p in partitions(scores, task) if p.name < current]
    return older[-1] if older else None


def read_tiers(partition: Path, key: str, tier: str) -> pl.DataFrame:
    """``key`` and ``tier`` of one score partition (what the migration compares)."""
    files = sorted(partition.glob("*.parquet"))
    if not files:
        return pl.DataFrame(schema={key: pl.String, tier: pl.String})
    return pl.read_parquet(files, columns=[key, tier])
