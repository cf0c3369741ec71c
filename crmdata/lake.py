"""The lake: one parquet file per contract table plus a small manifest.

Layout of a lake directory::

    customers.parquet  orders.parquet  ... (only the tables that exist)
    _lake.json         manifest: source, tables, declared custom attributes
    _truth/            ground truth, for synthetic worlds only

Writes are atomic: a lake is assembled in a temporary sibling directory and
renamed into place at the end, so a failed run never leaves half a lake and a
rerun replaces the previous one whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
from pydantic import BaseModel, Field

from crmdata.contract import EVENT_TABLES, TABLES, AttributeKind
from crmdata.errors import CrmscoreError
from crmdata.times import as_utc

log = logging.getLogger(__name__)

MANIFEST = "_lake.json"
TRUTH_DIR = "_truth"


class LakeError(CrmscoreError):
    """A lake that cannot be read: missing, not a lake, or a corrupt file."""


class LakeManifest(BaseModel):
    """What a lake holds, beyond the parquet files themselves."""

    source: str = Field(description="how the lake was made, e.g. 'generate seed=1' or 'import'")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    tables: list[str] = Field(default_factory=list)
    #: table -> column -> kind; extra columns that the contract keeps as custom attributes.
    custom_attributes: dict[str, dict[str, AttributeKind]] = Field(default_factory=dict)

    def attributes(self, table: str) -> dict[str, AttributeKind]:
        return self.custom_attributes.get(table, {})


def table_path(lake: Path, name: str) -> Path:
    return lake / f"{name}.parquet"


def read_manifest(lake: Path) -> LakeManifest:
    """The lake's manifest; a lake without one (hand-made) gets an inferred one."""
    if not lake.is_dir():
        raise LakeError(f"{lake}: no such lake directory")
    path = lake / MANIFEST
    if path.exists():
        try:
            return LakeManifest.model_validate_json(path.read_text())
        except ValueError as exc:
            raise LakeError(f"{path}: not a valid lake manifest ({exc.__class__.__name__})") from exc
    tables = [name for name in TABLES if table_path(lake, name).exists()]
    return LakeManifest(source="unknown", tables=tables)


def read_table(lake: Path, name: str, columns: list[str] | None = None) -> pl.DataFrame | None:
    """One table of the lake, or None when this optional table is absent."""
    path = table_path(lake, name)
    if not path.exists():
        return None
    try:
        return pl.read_parquet(path, columns=columns)
    except Exception as exc:  # polars raises several types for a damaged file
        raise LakeError(f"{path}: cannot read parquet ({exc})") from exc


def scan_table(lake: Path, name: str) -> pl.LazyFrame | None:
    """A lazy scan of one table (for the vectorized feature pipeline), or None if absent."""
    path = table_path(lake, name)
    return pl.scan_parquet(path) if path.exists() else None


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


def replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``; the old contents are removed only after the swap."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_tables(directory: Path, tables: dict[str, pl.DataFrame], manifest: LakeManifest) -> None:
    """Write tables and the manifest into ``directory`` (normally an ``atomic_dir``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.write_parquet(table_path(directory, name), compression="zstd", statistics=True)
        log.debug("wrote %s: %d rows", name, frame.height)
    manifest = manifest.model_copy(update={"tables": sorted(tables, key=list(TABLES).index)})
    (directory / MANIFEST).write_text(manifest.model_dump_json(indent=2))


def last_event(lake: Path) -> datetime:
    """The latest timestamp in any table of the lake."""
    return event_span(lake)[1]


def event_span(lake: Path) -> tuple[datetime, datetime]:
    """The earliest and the latest timestamp in any event table of the lake (a label table's
    ``as_of`` dates say when outcomes were judged, not that something happened)."""
    import duckdb

    first: datetime | None = None
    latest: datetime | None = None
    con = duckdb.connect()
    for name, table in EVENT_TABLES.items():
        path = table_path(lake, name)
        if not path.exists() or not table.timestamp_columns:
            continue
        low = ", ".join(f"min({c})" for c in table.timestamp_columns)
        high = ", ".join(f"max({c})" for c in table.timestamp_columns)
        lo, hi = con.execute(
            f"SELECT least({low}), greatest({high}) FROM read_parquet(?)", [str(path)]
        ).fetchall()[0]
        if hi is not None:
            lo, hi = as_utc(lo), as_utc(hi)
            first = lo if first is None else min(first, lo)
            latest = hi if latest is None else max(latest, hi)
    if first is None or latest is None:
        raise CrmscoreError(f"{lake}: the lake has no events to build features from")
    return first, latest


def check_as_of(lake: Path, as_of: datetime, slack: timedelta = timedelta(0)) -> datetime:
    """``as_of`` (UTC) if the lake has data on both sides of it, else a one-line error.

    ``slack`` lets a date fall that long after the last event (scoring at the grid's
    newest snapshot, the Monday after the last event, sees every event).
    """
    as_of = as_utc(as_of)
    first, last = event_span(lake)
    if as_of > last + slack:
        raise CrmscoreError(f"--as-of {as_of:%Y-%m-%d} is after the data's end: the lake's last event is "
                            f"{last:%Y-%m-%d}")
    if as_of <= first:
        raise CrmscoreError(f"--as-of {as_of:%Y-%m-%d} is before the data's start: the lake's first event is "
                            f"{first:%Y-%m-%d}")
    return as_of
