"""Scores back to where CRM apps read them: the Feast online store and PostgreSQL.

* ``push_online``: a run's rows into the ``<task>_scores`` feature view through
  its push source (``features/feature_views.py``), so the service and apps read
  precomputed scores with ``get_online_features`` by the same entity key as
  every other feature. The rows go through the bulk writer of ``features.materialize``
  (the bytes Feast's push writes, at bulk speed), or Feast's own ``FeatureStore.push``,
  in batches, where that cannot (list-valued scores); a newer push replaces an entity's row.
* ``write_postgres``: the run into ``<schema>.<task>_scores`` (created if
  needed; primary key entity + as_of). One transaction deletes the rows of that
  as_of and copies the new ones in, so a rerun replaces, never duplicates, and a
  reader sees either the old or the new run, never half of one. A customer-value
  run brings its tier migration along (``<schema>.clv_migration``, same transaction).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds
from pydantic import BaseModel

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from features.catalog import (
    JOIN_KEYS,
    SCORE_ENTITIES,
    SCORE_FIELDS,
    SCORE_TIMESTAMP,
    SCORE_VIEW_NAMES,
)
from features.materialize import write_online
from features.store import feature_store
from pipelines.scoring.migration import MIGRATION_TABLE
from pipelines.scoring.table import latest_partition, partition_dir, read_manifest

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

log = logging.getLogger(__name__)

#: Rows per ``FeatureStore.push`` call (bounds the protobuf conversion's memory).
PUSH_BATCH = 20_000
DEFAULT_PG_SCHEMA = "crmscore"


class PublishSummary(BaseModel):
    task: str
    target: str
    as_of: datetime
    rows: int
    seconds: float
    model_version: str


def read_run(ws: Workspace, task: str, as_of: datetime | None = None) -> tuple[pa.Table, Path]:
    """The rows of one scoring run (the ``as_of`` partition, default the newest)."""
    partition = latest_partition(ws.scores, task, as_of)
    files = sorted(str(p) for p in partition.glob("*.parquet"))
    table = ds.dataset(files, format="parquet").to_table() if files else None
    if table is None:
        raise CrmscoreError(f"{partition}: no parquet files")
    return table, partition


def push_online(ws: Workspace, task: str, as_of: datetime | None = None, profile: str = "local",
                store: FeatureStore | None = None) -> PublishSummary:
    """Push a scoring run into the online store through ``<task>_scores_push``."""
    # Feast takes seconds to import: only pushing needs it (--to-postgres alone does not).
    from feast.data_source import PushMode

    started = time.perf_counter()
    table, partition = read_run(ws, task, as_of)
    manifest = read_manifest(partition)
    store = store or feature_store(ws, profile)
    view = SCORE_VIEW_NAMES.get(task)
    if view is None:
        raise CrmscoreError(f"{task} scores have no online view (features.catalog.SCORE_VIEW_NAMES); "
                            "publish them with --to-postgres")
    _require_view(store, view)
    # The bulk writer writes what the push would (features.materialize.write_online);
    # Feast's push is the way for what it cannot (list-valued scores, other stores).
    if not write_online(store, view, table):
        frame = _push_frame(task, table)
        for start in range(0, len(frame), PUSH_BATCH):
            store.push(f"{view}_push", frame.iloc[start:start + PUSH_BATCH], to=PushMode.ONLINE)
    seconds = time.perf_counter() - started
    log.info("pushed %d %s scores (as of %s) into the online store in %.1fs", table.num_rows, task,
             f"{manifest.as_of:%Y-%m-%d}", seconds)
    return PublishSummary(task=task, target=f"feast online store ({view})", as_of=manifest.as_of,
                          rows=table.num_rows, seconds=round(seconds, 3), model_version=manifest.model_version)


def _require_view(store: FeatureStore, view: str) -> None:
    from feast.errors import FeatureViewNotFoundException

    try:
        store.get_feature_view(view)
    except FeatureViewNotFoundException:
        raise CrmscoreError(f"feature view {view!r} is not registered; run `crmscore features apply`") from None


def _push_frame(task: str, table: pa.Table) -> pd.DataFrame:
    key = JOIN_KEYS[SCORE_ENTITIES[task]]
    columns = [key, SCORE_TIMESTAMP, *(f.name for f in SCORE_FIELDS[task])]
    frame = table.select(columns).to_pandas()
    for f in SCORE_FIELDS[task]:
        if f.kind.endswith("_list"):
            # Arrow lists arrive as numpy arrays; Feast's converter wants lists.
            frame[f.name] = [None if v is None else list(v) for v in frame[f.name]]
    return frame


# --- PostgreSQL ---------------------------------------------------------------------------------

def _pg_type(kind: pa.DataType) -> str | None:
    """The PostgreSQL column type of an Arrow type of the score tables."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _pg_type(kind.value_type)
        return f"{inner}[]" if inner else None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "text"
    if pa.types.is_floating(kind):
        return "double precision"
    if pa.types.is_integer(kind):
        return "bigint"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    return None


def pg_conninfo(url: str) -> str:
    """``postgresql+psycopg://…`` (SQLAlchemy style) or ``postgresql://…`` → libpq URL."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    if not url.startswith("postgresql://"):
        raise CrmscoreError(f"--to-postgres {url!r}: expected postgresql://user@host:port/database")
    return url


def write_postgres(ws: Workspace, task: str, url: str, as_of: datetime | None = None,
                   schema: str = DEFAULT_PG_SCHEMA) -> PublishSummary:
    """Replace the run's as_of in ``<schema>.<task>_scores`` with the run's rows (customer value:
    and its tier migration in ``<schema>.clv_migration``, in the same transaction)."""
    table, partition = read_run(ws, task, as_of)
    manifest = read_manifest(partition)
    key = JOIN_KEYS[SCORE_ENTITIES.get(task, "customer")]
    name = f"{task}_scores"
    tables = [(name, table)]
    migration = partition_dir(ws.scores, MIGRATION_TABLE, manifest.as_of)
    if manifest.migration is not None and migration.is_dir():
        files = sorted(str(p) for p in migration.glob("*.parquet"))
        tables.append((MIGRATION_TABLE, ds.dataset(files, format="parquet").to_table()))
    started = time.perf_counter()
    _replace_in_postgres(url, schema, tables, key, manifest.as_of)
    seconds = time.perf_counter() - started
    log.info("wrote %d %s scores (as of %s) to PostgreSQL %s.%s in %.1fs", table.num_rows, task,
             f"{manifest.as_of:%Y-%m-%d}", schema, name, seconds)
    return PublishSummary(task=task, target=f"postgresql {schema}.{name}", as_of=manifest.as_of,
                          rows=table.num_rows, seconds=round(seconds, 3), model_version=manifest.model_version)


def _replace_in_postgres(url: str, schema: str, tables: list[tuple[str, pa.Table]], key: str,
                         as_of: datetime) -> None:
    """In one transaction, per (name, table): create ``<schema>.<name>`` if needed (primary key
    ``key`` + as_of), delete its rows of ``as_of`` and copy the table's rows in."""
    try:  # an optional extra (crmscore[postgres])
        import psycopg
        from psycopg import sql
    except ImportError:
        raise CrmscoreError("--to-postgres needs psycopg: pip install 'crmscore[postgres]'") from None

    json_columns = {"reasons"}
    try:
        with psycopg.connect(pg_conninfo(url)) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            for name, table in tables:
                defs = []
                for f in table.schema:
                    pg_type = "jsonb" if f.name in json_columns else _pg_type(f.type)
                    if pg_type is None:
                        raise CrmscoreError(f"{name}.{f.name}: no PostgreSQL type for {f.type}")
                    defs.append(sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(pg_type)))
                target = sql.Identifier(schema, name)
                cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}, {}))").format(
                    target, sql.SQL(", ").join(defs), sql.Identifier(key), sql.Identifier(SCORE_TIMESTAMP)))
                cur.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(target, sql.Identifier(SCORE_TIMESTAMP)),
                            [as_of])
                copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    target, sql.SQL(", ").join(sql.Identifier(c) for c in table.schema.names))
                with cur.copy(copy_sql) as copy:
                    for batch in table.to_batches(max_chunksize=50_000):
                        values = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
                        for row in zip(*values, strict=True):
                            copy.write_row(row)
    except psycopg.Error as exc:
        raise CrmscoreError(f"--to-postgres: {type(exc).__name__}: {exc}".strip()) from None


def publish_all(ws: Workspace, tasks: Sequence[str], *, online: bool = True, profile: str = "local",
                postgres: str | None = None, schema: str = DEFAULT_PG_SCHEMA,
                as_of: datetime | None = None) -> list[PublishSummary]:
    """Push each task's run (``as_of``, default its newest) to the online store and/or PostgreSQL."""
    out: list[PublishSummary] = []
    store: Any = None
    for task in tasks:
        if online:
            if store is None:
                store = feature_store(ws, profile)
            out.append(push_online(ws, task, as_of, profile, store=store))
        if postgres:
            out.append(write_postgres(ws, task, postgres, as_of, schema))
    return out
