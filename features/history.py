"""The history sample: every entity now, a fixed sample of them in the past.

Serving and batch scoring need every customer and lead at the newest snapshots; the
older snapshots only feed training and backtests, which need a large sample, not
everyone. So when a lake has more than ``HISTORY_ENTITIES`` customers
(or leads), the older snapshots of the customer, customer-value and lead tables hold a
deterministic sample of about that many of them, and every point-in-time frame with
labels (``training.frames.labelled_frame``) keeps the same sample. The history of a
million-customer lake then costs what a 50k one's does to build and train, instead of
20x; only the newest snapshots grow with the lake (BENCHMARKS.md, "million customers").

The sample is a pure function of an id and the fraction (the first 8 bytes of the id's
MD5 against ``fraction``), so a rebuild, another process or another engine picks the
same entities, and a larger fraction keeps every entity a smaller one kept. Product
features are never sampled: they aggregate over all customers.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import polars as pl
from pydantic import BaseModel

from crmdata.contract import (
    CUSTOMERS,
    INTERACTIONS,
    LEAD_ACTIVITIES,
    LEADS,
    ORDERS,
    PRODUCTS,
    SUBSCRIPTIONS,
)
from crmdata.lake import MANIFEST, table_path
from features.catalog import JOIN_KEYS

log = logging.getLogger(__name__)

Frame = TypeVar("Frame", pl.DataFrame, pd.DataFrame)

#: Entities of each kind kept at the older snapshots (about: the sample is by hash).
HISTORY_ENTITIES = 50_000
#: The newest snapshots hold every entity: scoring reads the newest and the week before.
FULL_SNAPSHOTS = 2

#: Entity kind -> the table that lists them and its id column.
_ENTITY_TABLES = {"customer": (CUSTOMERS.name, JOIN_KEYS["customer"]), "lead": (LEADS.name, JOIN_KEYS["lead"])}
#: Lake table -> the entity kind whose sample filters it (products: never filtered).
_FILTERED_BY = {
    CUSTOMERS.name: "customer", ORDERS.name: "customer", SUBSCRIPTIONS.name: "customer",
    INTERACTIONS.name: "customer", LEADS.name: "lead", LEAD_ACTIVITIES.name: "lead",
}


class HistorySample(BaseModel):
    """What a build sampled: recorded in ``_build.json`` and read by training."""

    #: The cap it was built with.
    entities: int
    #: Entity kind -> the fraction kept at ``dates`` (1.0: everyone).
    fraction: dict[str, float]
    #: The snapshots that hold only the sample.
    dates: list[datetime]

    def describe(self) -> str:
        kept = ", ".join(f"{k} {f:.1%}" for k, f in self.fraction.items())
        return f"{len(self.dates)} older snapshots hold a sample ({kept}; cap {self.entities:,})"


def sample_fraction(count: int, cap: int) -> float:
    return 1.0 if count <= cap else cap / count


def in_sample(ids: pl.Series, fraction: float) -> np.ndarray:
    """Which ids the sample at ``fraction`` keeps (a boolean per row)."""
    if fraction >= 1.0:
        return np.ones(len(ids), dtype=bool)
    unique = ids.cast(pl.String).unique()
    bound = int(fraction * 2**64)
    kept = [i for i in unique.to_list()
            if i is not None and int.from_bytes(hashlib.md5(i.encode()).digest()[:8], "big") < bound]
    return ids.cast(pl.String).is_in(pl.Series(kept, dtype=pl.String)).to_numpy()


def plan(lake: Path, dates: Sequence[datetime], cap: int | None,
         full: Sequence[datetime] = ()) -> HistorySample | None:
    """The sample a build of ``dates`` takes, or None when it keeps everyone: all but the
    newest ``FULL_SNAPSHOTS`` and the ``full`` dates are sampled."""
    older = [d for d in sorted(set(dates))[:-FULL_SNAPSHOTS] if d not in set(full)]
    if cap is None or not older:
        return None
    fraction = {}
    for kind, (table, _) in _ENTITY_TABLES.items():
        path = table_path(lake, table)
        if path.exists():
            fraction[kind] = sample_fraction(pl.scan_parquet(path).select(pl.len()).collect().item(), cap)
    if all(f >= 1.0 for f in fraction.values()):
        return None
    return HistorySample(entities=cap, fraction=fraction, dates=older)


def write_sampled_lake(lake: Path, out: Path, sample: HistorySample) -> Path:
    """A copy of ``lake`` in ``out`` with only the sampled entities' rows (products whole)."""
    out.mkdir(parents=True, exist_ok=True)
    kept: dict[str, pl.Series] = {}
    for kind, (table, column) in _ENTITY_TABLES.items():
        path = table_path(lake, table)
        if path.exists():
            ids = pl.read_parquet(path, columns=[column])[column]
            kept[kind] = ids.filter(in_sample(ids, sample.fraction.get(kind, 1.0)))
    for table in (*_FILTERED_BY, PRODUCTS.name):
        source = table_path(lake, table)
        if not source.exists():
            continue
        kind = _FILTERED_BY.get(table)
        if kind is None or sample.fraction.get(kind, 1.0) >= 1.0:
            shutil.copyfile(source, table_path(out, table))
            continue
        column = _ENTITY_TABLES[kind][1]
        (pl.scan_parquet(source).filter(pl.col(column).is_in(kept[kind].implode()))
         .sink_parquet(table_path(out, table)))
    shutil.copyfile(lake / MANIFEST, out / MANIFEST)
    return out


def sample_labels(labels: Frame, key: str, sample: HistorySample | None) -> Frame:
    """The label rows whose entity (``key``) is in the sample; all of them when the build
    kept everyone or ``key`` is not a sampled kind."""
    kind = next((k for k, (_, column) in _ENTITY_TABLES.items() if column == key), None)
    fraction = sample.fraction.get(kind, 1.0) if sample and kind else 1.0
    if fraction >= 1.0:
        return labels
    mask = in_sample(pl.Series(labels[key]), fraction)
    kept = labels.filter(mask) if isinstance(labels, pl.DataFrame) else labels[mask]
    log.info("history sample: training on %d of %d label rows (%.1f%% of %ss)", len(kept), len(labels),
             100 * fraction, kind)
    return kept
