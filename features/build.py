"""The feature pipeline: raw lake tables -> point-in-time feature tables.

``build_features`` runs one query per feature table (``features/sql.py``) over the lake
at the given snapshot dates (``features/grid.py`` chooses them by default), on DuckDB or,
transpiled, on Spark (``features/spark.py``), types each result from the catalogue and writes the tables atomically: a rerun
replaces the directory, never appends. Outputs: ``customer.parquet``,
``lead.parquet``, ``product.parquet``, ``customer_value.parquet`` and ``_build.json``
(``BuildSummary``: what was built, and which features the lake could not support and
why). ``add_snapshots`` adds dates to existing tables without recomputing the
snapshots they hold.

The customer-value table is the one step that is not only SQL: its RFM scores are
ranked within each snapshot (``features.rfm``, polars) and its peer columns come from
one BG/NBD + Gamma-Gamma fit per snapshot (``features.peer``) on the summary columns
its query returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

from crmdata.contract import (
    ACTIVITY_TABLES,
    CUSTOMERS,
    EVENT_TABLES,
    LEADS,
    ORDERS,
    PRODUCTS,
    TIMESTAMP,
)
from crmdata.errors import CrmscoreError
from crmdata.lake import atomic_dir, read_manifest, table_path
from crmdata.times import as_utc
from features.catalog import (
    EVENT_TIMESTAMP,
    FEATURES,
    FIXED_SCHEMA_TABLES,
    JOIN_KEYS,
    TABLE_ENTITIES,
    VALUE_TABLE,
    attribute_column,
    table_file,
)
from features.history import HISTORY_ENTITIES, HistorySample, plan, write_sampled_lake
from features.sql import SqlContext, customer_sql, lead_sql, product_sql, value_sql

log = logging.getLogger(__name__)

BUILD_SUMMARY = "_build.json"

#: Where the feature queries run: in process (DuckDB) or on a Spark session.
Engine = Literal["duckdb", "spark"]
ENGINES: tuple[Engine, ...] = ("duckdb", "spark")

_POLARS_KIND: dict[str, pl.DataType] = {"int": pl.Int64(), "float": pl.Float64(), "str": pl.String()}
_ATTRIBUTE_KIND: dict[str, pl.DataType] = {"categorical": pl.String(), "numeric": pl.Float64()}


class EntitySummary(BaseModel):
    rows: int
    entities: int
    features: list[str]
    #: feature -> why it is absent (the raw tables it needs).
    unavailable: dict[str, str] = Field(default_factory=dict)
    attributes: list[str] = Field(default_factory=list)
    note: str | None = None


class BuildSummary(BaseModel):
    """What a build wrote; saved as ``_build.json`` beside the feature tables."""

    lake: str
    as_of: list[datetime]
    tables_present: list[str]
    tables_missing: list[str]
    entities: dict[str, EntitySummary]
    seconds: float
    built_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: The lake manifest's ``created_at``: snapshots added later must come from the same lake.
    lake_created_at: datetime | None = None
    engine: Engine = "duckdb"
    #: The older snapshots that hold only a sample of the entities (``features.history``).
    history: HistorySample | None = None

    def render(self) -> str:
        lines = [
            (f"features from {self.lake}: {len(self.as_of)} snapshots "
            f"({self.as_of[0]:%Y-%m-%d} .. {self.as_of[-1]:%Y-%m-%d}) in {self.seconds:.1f}s"
            + (f" on {self.engine}" if self.engine != "duckdb" else ""))
        ]
        if self.history:
            lines.append(f"  history: {self.history.describe()}")
        if self.tables_missing:
            lines.append(f"  lake lacks: {', '.join(self.tables_missing)}")
        for name, ent in self.entities.items():
            lines.append(
                f"  {name}: {ent.rows:,} rows, {ent.entities:,} entities, "
                f"{len(ent.features)} features"
                + (f" ({len(ent.attributes)} custom attributes)" if ent.attributes else "")
            )
            if ent.unavailable:
                lines.append(f"    unavailable: {', '.join(sorted(ent.unavailable))}")
            if ent.note:
                lines.append(f"    note: {ent.note}")
        return "\n".join(lines)


def read_build_summary(feature_tables: Path) -> BuildSummary:
    path = feature_tables / BUILD_SUMMARY
    if not path.exists():
        raise CrmscoreError(
            f"{feature_tables}: no feature tables; run `crmscore features build` first"
        )
    return BuildSummary.model_validate_json(path.read_text())


def build_features(
    lake: Path,
    out: Path,
    as_of: Sequence[datetime],
    *,
    threads: int | None = None,
    engine: Engine = "duckdb",
    spark_master: str | None = None,
    history_entities: int | None = HISTORY_ENTITIES,
    full: Sequence[datetime] = (),
) -> BuildSummary:
    """Compute the customer, lead and product feature tables at each ``as_of`` date.

    Writes ``out`` atomically (replacing whatever was there) and returns the summary.
    ``as_of`` dates are UTC (naive ones are taken as UTC); duplicates are ignored.
    ``engine`` runs the queries on DuckDB or on Spark (``spark_master``, default: the
    active session or ``features.spark.spark_session``'s choice); the tables are the same.
    ``history_entities``: past the newest snapshots, keep a sample of about this many
    customers and leads (``features.history``; None keeps everyone), except at ``full``.
    """
    sample = plan(lake, [as_utc(d) for d in as_of], history_entities, [as_utc(d) for d in full])
    if sample is None:
        frames, summary = _compute(lake, as_of, threads, engine, spark_master)
    else:
        frames, summary = _compute_sampled(lake, as_of, sample, threads, engine, spark_master)
    _write(out, frames, summary)
    return summary


def _compute_sampled(
    lake: Path, as_of: Sequence[datetime], sample: HistorySample, threads: int | None, engine: Engine,
    spark_master: str | None,
) -> tuple[dict[str, pl.DataFrame], BuildSummary]:
    """Every entity at the newest snapshots, the sample at ``sample.dates``; product
    features (aggregates over all customers) at every snapshot from the whole lake."""
    import tempfile

    started = time.perf_counter()
    older = set(sample.dates)
    newest = [d for d in {as_utc(d) for d in as_of} if d not in older]
    log.info("features: %s", sample.describe())
    frames, summary = _compute(lake, newest, threads, engine, spark_master)
    products, _ = _compute(lake, sample.dates, threads, engine, spark_master, tables=("product",))
    with tempfile.TemporaryDirectory(prefix="crmscore-sample-") as tmp:
        small = write_sampled_lake(lake, Path(tmp), sample)
        past, _ = _compute(small, sample.dates, threads, engine, spark_master,
                           tables=tuple(t for t in frames if t != "product"))
    past.update(products)
    for entity, frame in past.items():
        frames[entity] = pl.concat([frame, frames[entity]]).sort(EVENT_TIMESTAMP, JOIN_KEYS[TABLE_ENTITIES[entity]])
    entities = {name: ent.model_copy(update={"rows": frames[name].height}) for name, ent in summary.entities.items()}
    summary = summary.model_copy(update={
        "as_of": sorted(older | set(newest)), "entities": entities, "history": sample,
        "seconds": round(time.perf_counter() - started, 3)})
    return frames, summary


def add_snapshots(
    lake: Path,
    out: Path,
    as_of: Sequence[datetime],
    *,
    threads: int | None = None,
    engine: Engine = "duckdb",
    spark_master: str | None = None,
    complete: bool = True,
) -> BuildSummary:
    """Add snapshots at ``as_of`` to the feature tables in ``out``, keeping every existing one.

    Only the new dates are computed; their rows are appended and the tables rewritten
    atomically. Tables built from another lake (reimported since), or with other
    columns, cannot be mixed with new rows: then every snapshot is rebuilt from this lake.
    ``complete``: the dates must hold every entity (scoring), so one the history sample
    holds is recomputed whole; False when the sample will do (training and backtests,
    whose frames keep only the sample).
    """
    wanted = sorted({as_utc(d) for d in as_of})
    whole = wanted if complete else []

    def rebuild(dates: list[datetime]) -> BuildSummary:
        return build_features(lake, out, dates, threads=threads, engine=engine, spark_master=spark_master,
                              full=whole)

    try:
        existing = read_build_summary(out)
    except CrmscoreError:
        return rebuild(wanted)
    sampled = set(existing.history.dates) if existing.history else set()
    redo = [d for d in whole if d in sampled]
    new = [d for d in wanted if d not in set(existing.as_of)] + redo
    if not new:
        log.info("features: every requested snapshot is built already")
        return existing
    every = sorted(set(existing.as_of) | set(new))
    if existing.lake_created_at != read_manifest(lake).created_at or existing.lake != str(lake):
        log.info("features were built from another lake: rebuilding all %d snapshots", len(every))
        return rebuild(every)
    if redo:
        log.info("features: recomputing %d sampled snapshot(s) with every entity", len(redo))
    frames, fresh = _compute(lake, new, threads, engine, spark_master)
    merged: dict[str, pl.DataFrame] = {}
    for entity, frame in frames.items():
        path = out / table_file(entity)
        if not path.exists():
            log.info("the %s feature table is new since the last build: rebuilding all %d snapshots",
                     entity, len(every))
            return rebuild(every)
        old = pl.read_parquet(path).filter(~pl.col(EVENT_TIMESTAMP).is_in(redo))
        if old.schema != frame.schema:
            log.info("%s features changed columns since the last build: rebuilding all %d snapshots",
                     entity, len(every))
            return rebuild(every)
        merged[entity] = pl.concat([old, frame]).sort(EVENT_TIMESTAMP, JOIN_KEYS[TABLE_ENTITIES[entity]])
    entities = {
        name: ent.model_copy(update={"rows": merged[name].height,
                                     "entities": merged[name][JOIN_KEYS[TABLE_ENTITIES[name]]].n_unique()})
        for name, ent in fresh.entities.items()
    }
    history = existing.history
    if history and redo:
        left = [d for d in history.dates if d not in set(redo)]
        history = history.model_copy(update={"dates": left}) if left else None
    summary = fresh.model_copy(update={"as_of": every, "entities": entities, "history": history})
    _write(out, merged, summary)
    log.info("features: added %d snapshot(s), %d in all", len(new), len(every))
    return summary


def _compute(
    lake: Path, as_of: Sequence[datetime], threads: int | None, engine: Engine, spark_master: str | None,
    tables: Sequence[str] | None = None,
) -> tuple[dict[str, pl.DataFrame], BuildSummary]:
    started = time.perf_counter()
    snapshots = sorted({as_utc(d) for d in as_of})
    if not snapshots:
        raise CrmscoreError("no snapshot dates to build features for")
    manifest = read_manifest(lake)
    present = {name for name in EVENT_TABLES if table_path(lake, name).exists()}
    if CUSTOMERS.name not in present:
        raise CrmscoreError(f"{lake}: the lake has no {CUSTOMERS.name} table (required)")
    if not present & set(ACTIVITY_TABLES):
        raise CrmscoreError(f"{lake}: the lake has neither orders nor subscriptions; features need one")
    if ORDERS.name not in present:
        log.warning("the lake has no orders: order features (recency, frequency, revenue, products) are "
                    "left out; transactional churn and next-best-product cannot be trained")

    if engine == "spark":
        from features.spark import DEFAULT_MASTER, SparkSqlContext, spark_session

        spark = spark_session(spark_master, app_name="crmscore-features", fallback=DEFAULT_MASTER)
        log.info("features on Spark %s (master %s)", spark.version, spark.sparkContext.master)
        ctx: SqlContext = SparkSqlContext.open_spark(spark, lake, present, manifest.custom_attributes, snapshots)
    elif engine == "duckdb":
        ctx = SqlContext.open(lake, present, manifest.custom_attributes, snapshots, threads)
    else:
        raise CrmscoreError(f"unknown feature engine {engine!r}: one of {', '.join(ENGINES)}")

    frames: dict[str, pl.DataFrame] = {}
    summaries: dict[str, EntitySummary] = {}
    for entity, compute in (
        ("customer", customer_sql),
        ("lead", lead_sql),
        ("product", product_sql),
        (VALUE_TABLE, value_sql),
    ):
        if tables is not None and entity not in tables:
            continue
        t0 = time.perf_counter()
        frame, summary = _finish(ctx, entity, compute(ctx))
        frames[entity], summaries[entity] = frame, summary
        log.info(
            "%s features: %d rows x %d features in %.1fs",
            entity,
            frame.height,
            len(summary.features),
            time.perf_counter() - t0,
        )

    summary = BuildSummary(
        lake=str(lake),
        as_of=snapshots,
        tables_present=[t for t in EVENT_TABLES if t in present],
        tables_missing=[t for t in EVENT_TABLES if t not in present],
        entities=summaries,
        seconds=round(time.perf_counter() - started, 3),
        lake_created_at=manifest.created_at,
        engine=engine,
    )
    return frames, summary


def _write(out: Path, frames: dict[str, pl.DataFrame], summary: BuildSummary) -> None:
    with atomic_dir(out) as tmp:
        for entity, frame in frames.items():
            write_feature_table(frame, tmp / table_file(entity))
        (tmp / BUILD_SUMMARY).write_text(summary.model_dump_json(indent=2))


def write_feature_table(frame: pl.DataFrame, path: Path) -> None:
    """Write with plain ``string`` columns: Feast's schema inference reads arrow's
    ``large_string`` (polars' default) as Json, not String."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = frame.to_arrow()
    schema = pa.schema(
        [
            pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f
            for f in table.schema
        ]
    )
    pq.write_table(table.cast(schema), path, compression="zstd")


def _finish(ctx: SqlContext, entity: str, sql: str | None) -> tuple[pl.DataFrame, EntitySummary]:
    """Run a feature table's query and shape the result: catalogue order and types,
    attributes last. ``entity`` names the feature table (``TABLE_ENTITIES``)."""
    if entity in FIXED_SCHEMA_TABLES:
        assert sql is not None  # the value query always runs
        return _finish_value(ctx, entity, sql)
    key = JOIN_KEYS[TABLE_ENTITIES[entity]]
    specs = FEATURES[entity]
    table = {"customer": CUSTOMERS, "lead": LEADS, "product": PRODUCTS}[entity]
    present_entity_table = ctx.has(table.name)
    # A missing entity table still gets its (empty) table with every feature the other
    # tables allow, so the view and its service stay registered with a stable schema.
    kept = [s for s in specs if ctx.available(s)]
    unavailable = {
        s.name: "needs " + ", ".join(t for t in s.requires if not ctx.has(t))
        for s in specs
        if s not in kept
    }
    attributes = ctx.attributes.get(table.name, {}) if present_entity_table else {}
    schema: dict[str, pl.DataType] = {key: pl.String(), EVENT_TIMESTAMP: TIMESTAMP}
    schema |= {s.name: _POLARS_KIND[s.kind] for s in kept}
    schema |= {attribute_column(a): _ATTRIBUTE_KIND[k] for a, k in attributes.items()}

    note = None
    if not kept and not attributes:
        # Feast infers a view's schema from its table and cannot register a view without a
        # feature (a subscription lake has neither orders nor products): no feature means no
        # rows, so the empty table keeps the catalogue's columns and the view stays registered.
        frame = pl.DataFrame(schema=schema | {s.name: _POLARS_KIND[s.kind] for s in specs})
        note = f"no {entity} feature can be computed from this lake: no rows"
    elif sql is None:
        frame = pl.DataFrame(schema=schema)
        note = f"the lake has no {table.name} table: no rows"
    else:
        raw = ctx.frame(sql)
        frame = raw.select(
            pl.col(key).cast(pl.String),
            pl.from_epoch(pl.col("as_of"), time_unit="us").dt.replace_time_zone("UTC").alias(
                EVENT_TIMESTAMP
            ),
            *[pl.col(name).cast(dtype) for name, dtype in list(schema.items())[2:]],
        ).sort(EVENT_TIMESTAMP, key)
        if frame.is_empty() and entity == "product":
            note = "no product ids in orders and no products table: no rows"
    summary = EntitySummary(
        rows=frame.height,
        entities=frame[key].n_unique(),
        features=[s.name for s in kept] + [attribute_column(a) for a in attributes],
        unavailable=unavailable,
        attributes=[attribute_column(a) for a in attributes],
        note=note,
    )
    return frame, summary


def _finish_value(ctx: SqlContext, name: str, sql: str) -> tuple[pl.DataFrame, EntitySummary]:
    """The customer-value table: every catalogue column, always (its view declares the
    schema, and the churn service projects the peer columns on every lake), null where
    the lake lacks what a feature needs; RFM scores and the peer filled in per snapshot."""
    from features.peer import peer_features
    from features.rfm import rfm_scores

    key = JOIN_KEYS[TABLE_ENTITIES[name]]
    specs = FEATURES[name]
    kept = {s.name for s in specs if ctx.available(s)}
    unavailable = {
        s.name: "needs " + ", ".join(t for t in s.requires if not ctx.has(t))
        for s in specs
        if s.name not in kept
    }
    raw = ctx.frame(sql)
    frame = raw.select(
        pl.col(key).cast(pl.String),
        pl.from_epoch(pl.col("as_of"), time_unit="us").dt.replace_time_zone("UTC").alias(EVENT_TIMESTAMP),
        pl.exclude(key, "as_of"),
    ).sort(EVENT_TIMESTAMP, key)
    if ORDERS.name in ctx.present:
        frame = peer_features(rfm_scores(frame))
    frame = frame.select(
        pl.col(key),
        pl.col(EVENT_TIMESTAMP),
        *[
            (pl.col(s.name) if s.name in kept and s.name in frame.columns else pl.lit(None))
            .cast(_POLARS_KIND[s.kind])
            .alias(s.name)
            for s in specs
        ],
    )
    lacking = sorted({t for s in specs if s.name not in kept for t in s.requires if not ctx.has(t)})
    note = f"{len(unavailable)} columns all null: the lake has no {', '.join(lacking)}" if lacking else None
    summary = EntitySummary(
        rows=frame.height,
        entities=frame[key].n_unique(),
        features=[s.name for s in specs if s.name in kept],
        unavailable=unavailable,
        note=note,
    )
    return frame, summary
