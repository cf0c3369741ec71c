"""The score tables: layout, atomic replacement of a partition, run manifests.

Layout under ``Workspace.scores``::

    churn/as_of_date=2025-12-29/part-00000.parquet ... _manifest.json
    lead/as_of_date=.../
    nbp/as_of_date=.../
    .staging/              work in progress (never read by anyone)

One hive-style partition per scoring date, so any parquet reader (polars,
pyarrow, DuckDB, Spark, Feast's file offline store) reads a task's whole history
as one table with an ``as_of_date`` column. A run writes its partition in
``.staging`` and swaps it in only once every entity is accounted for, so a
failed or interrupted run leaves the previous partition untouched and a rerun of
the same date replaces it whole (never appends). The staging area is outside the
table's directory on purpose: Feast's dask reader treats *any* subdirectory of a
table, hidden or not, as a partition.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from features.catalog import score_dir_name

log = logging.getLogger(__name__)

PARTITION_KEY = "as_of_date"
MANIFEST = "_manifest.json"
STAGING = ".staging"


class ReconciliationError(CrmscoreError):
    """The rows written do not match the entities that were to be scored."""


def table_dir(scores: Path, task: str) -> Path:
    return scores / score_dir_name(task)


def partition_name(as_of: datetime) -> str:
    return f"{PARTITION_KEY}={as_of.astimezone(UTC):%Y-%m-%d}"


def partition_dir(scores: Path, task: str, as_of: datetime) -> Path:
    return table_dir(scores, task) / partition_name(as_of)


def partitions(scores: Path, task: str) -> list[Path]:
    """The task's partitions, oldest first."""
    root = table_dir(scores, task)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"{PARTITION_KEY}="))


@contextmanager
def staged_partition(scores: Path, task: str, as_of: datetime) -> Iterator[Path]:
    """A fresh staging directory that becomes the task's ``as_of`` partition if the block
    succeeds; on any exception (or interrupt) it is deleted and the old partition stays."""
    staging_root = scores / STAGING
    staging_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{task}-{partition_name(as_of)}-", dir=staging_root))
    try:
        yield tmp
        swap_in(tmp, partition_dir(scores, task, as_of), staging_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(new: Path, target: Path, staging_root: Path) -> None:
    """Replace ``target`` with ``new`` by two renames on one filesystem.

    The old partition is moved into the staging area first (so no reader of the
    table ever sees a half-written or extra directory), then deleted.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = staging_root / f"old-{target.name}-{os.getpid()}-{datetime.now(UTC):%H%M%S%f}"
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class StageSeconds(BaseModel):
    """Where a run's time went. Chunk stages run in parallel threads, so they are
    summed thread-seconds; ``read``, ``finish`` (read back + reconcile) and ``drift``
    (reference, PSI, MLflow) are wall seconds."""

    read: float = 0.0
    prepare: float = 0.0
    predict: float = 0.0
    calibrate_grade: float = 0.0
    reasons: float = 0.0
    write: float = 0.0
    finish: float = 0.0
    drift: float = 0.0

    def shares(self) -> dict[str, float]:
        values = self.model_dump()
        total = sum(values.values()) or 1.0
        return {k: v / total for k, v in values.items()}


class Distribution(BaseModel):
    """The scores of one run, in the terms a CRM team reads them."""

    grades: dict[str, int] = Field(default_factory=dict, description="rows per grade/band, best first")
    probability: dict[str, float] = Field(default_factory=dict, description="mean and quantiles")
    value: dict[str, float] = Field(default_factory=dict, description="customer value: total, mean and "
                                                                       "quantiles of clv over horizon_days")


def grade_counts(scored: pa.Table, column: str) -> dict[str, int]:
    """Rows per grade/band of a scored Arrow table (nulls not counted)."""
    counts = pc.value_counts(scored.column(column).combine_chunks())
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] is not None}


class RunManifest(BaseModel):
    """What one scoring run read, produced and how long it took (``_manifest.json``)."""

    task: str
    as_of: datetime
    engine: str
    model_name: str
    model_version: str
    model_alias: str | None = None
    model_run_id: str | None = None
    feature_service: str | None = None
    inputs: dict[str, str] = Field(default_factory=dict, description="what was read: paths and their versions")
    entities: int = Field(description="entities in the population at as_of")
    rows: int = Field(description="rows written (one per entity)")
    no_features: int = Field(0, description="entities with no feature snapshot within the TTL (scores left null)")
    feature_timestamps: list[datetime] = Field(
        default_factory=list, description="the event times of the feature rows used (normally just as_of)")
    reasons: str = Field("all", description="all | top (best grades only) | none")
    distribution: Distribution = Field(default_factory=Distribution)
    seconds: float
    rows_per_second: float
    stages: StageSeconds = Field(default_factory=StageSeconds)
    output: str
    drift: dict | None = Field(None, description="summary of the drift report (pipelines/drift.py)")
    migration: dict | None = Field(None, description="customer value: the tier migration against the previous "
                                                     "run (pipelines/scoring/migration.py)")
    started_at: datetime
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def write_manifest(directory: Path, manifest: RunManifest) -> None:
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))


def read_manifest(partition: Path) -> RunManifest:
    path = partition / MANIFEST
    if not path.exists():
        raise CrmscoreError(f"{partition}: no run manifest; was this partition written by `crmscore score`?")
    return RunManifest.model_validate_json(path.read_text())


def latest_partition(scores: Path, task: str, as_of: datetime | None = None) -> Path:
    """The ``as_of`` partition of a task, or its newest one."""
    if as_of is not None:
        path = partition_dir(scores, task, as_of)
        if not path.is_dir():
            raise CrmscoreError(f"no {task} scores as of {as_of:%Y-%m-%d}: run `crmscore score {task}` first")
        return path
    found = partitions(scores, task)
    if not found:
        raise CrmscoreError(f"no {task} scores in {table_dir(scores, task)}: run `crmscore score {task}` first")
    return found[-1]


def written_ids(staging: Path, key: str) -> pl.Series:
    """The ids actually on disk in a staged partition (what readers will see)."""
    files = sorted(staging.glob("*.parquet"))
    if not files:
        return pl.Series(key, [], dtype=pl.String)
    return pl.read_parquet(files, columns=[key]).get_column(key)


def reconcile(expected: Sequence[str] | pl.Series, written: Sequence[str] | pl.Series, what: str) -> None:
    """Entities in = rows out, or fail naming what is missing, extra or duplicated.

    Set arithmetic as polars anti-joins: a million ids reconcile in milliseconds.
    """
    exp = pl.DataFrame({"id": pl.Series(expected, dtype=pl.String)})
    got = pl.DataFrame({"id": pl.Series(written, dtype=pl.String)})
    ids = exp.get_column("id")
    # A sorted, duplicate-free population written in its own order (the local engine):
    # elementwise comparisons prove the sets equal, with no hashing of a million strings.
    strictly_sorted = ids.null_count() == 0 and bool((ids.slice(1) > ids.slice(0, len(ids) - 1)).all())
    if exp.height == got.height and strictly_sorted and ids.equals(got.get_column("id")):
        return
    missing = exp.join(got, on="id", how="anti").get_column("id").sort()
    extra = got.join(exp, on="id", how="anti").get_column("id").unique().sort()
    duplicated = got.height - got.get_column("id").n_unique()
    if not (missing.len() or extra.len() or duplicated):
        return
    parts = []
    if missing.len():
        parts.append(f"{missing.len()} entities have no score (e.g. {', '.join(missing.head(10).to_list())})")
    if extra.len():
        parts.append(f"{extra.len()} scored rows are not in the population "
                     f"(e.g. {', '.join(extra.head(10).to_list())})")
    if duplicated:
        parts.append(f"{duplicated} duplicate rows")
    raise ReconciliationError(
        f"{what}: {exp.height} entities in, {got.height} rows out: " + "; ".join(parts)
        + ". Nothing was published; the previous output is unchanged."
    )
