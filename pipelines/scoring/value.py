"""``crmscore score clv``: every customer of the value model's population, with its champion.

The ``clv`` score table (one row per customer, one partition per date, like the
others): ``customer_id, as_of, clv, clv_low, clv_high, expected_margin, tier,
rfm_segment, reasons, model_version, feature_timestamp``. ``clv`` and its interval
are spend over the model's horizon; the tier is the model's A–D rule
(``training.value.tiers``). A customer without a feature row within the TTL gets
null values (with ``--allow-missing``; otherwise the run fails, as for churn).

Beside it, the ``clv_migration`` table of the same date: each customer's tier
before (the previous run) and now, and the movement (``pipelines.scoring.migration``);
its counts go into the run's manifest and summary.

The features are read and the rows scored exactly as the local engine does for
churn and leads (point-in-time read of the feature service, Arrow chunks in a
thread pool, the model's ``Encoder`` on Arrow columns, reasons as JSON built
column-wise); the answer per row is ``serving.scoring.value_outputs``, the very
function the service answers with. Both tables are staged and swapped in only
once every customer is accounted for: the scores first, then the migration.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from features.store import feature_store
from pipelines.scoring.finish import build_stamp, drift_report, feature_timestamps, log_drift
from pipelines.scoring.inputs import default_as_of, population, read_features_as_of, resolve_service
from pipelines.scoring.migration import (
    MIGRATION_TABLE,
    MOVEMENT,
    PREVIOUS_AS_OF,
    TIER_AFTER,
    TIER_BEFORE,
    movement_counts,
    previous_partition,
    read_tiers,
    tier_migration,
)
from pipelines.scoring.predict import _Clock, reasons_json
from pipelines.scoring.table import (
    Distribution,
    RunManifest,
    StageSeconds,
    partition_dir,
    reconcile,
    staged_partition,
    write_manifest,
    written_ids,
)
from pipelines.scoring.types import (
    FEATURE_TIMESTAMP,
    NoProgress,
    Progress,
    ReasonsMode,
    ScoreOptions,
)
from serving.scoring import value_outputs
from training.tasks import VALUE
from training.value.scorer import ValueModel, load_value_model
from training.value.spec import COMPLAINTS_365, SPEND_365, TICKETS_365
from training.value.tiers import TIERS

log = logging.getLogger(__name__)

#: The tier column of the score table (the task's grade column).
TIER = VALUE.grade_column or "tier"
#: The RFM segment the score table carries beside the tier (a feature of the customer_value view).
RFM_SEGMENT = "rfm_segment"
#: The value columns of the score table, in order.
VALUE_COLUMNS = ("clv", "clv_low", "clv_high", "expected_margin")
TOP_REASONS = 3
#: ``--reasons top`` explains tiers A and B (the customers someone acts on first).
TOP_TIERS = 2


class MigrationSummary(BaseModel):
    """The tier migration of a ``score clv`` run against the previous one."""

    previous_as_of: datetime | None = Field(description="the run compared against; null: the first run")
    counts: dict[str, int] = Field(description="customers per movement")
    output: str


@dataclass
class ValuePredictor:
    """The value champion applied to Arrow chunks of the feature frame."""

    model: ValueModel
    key: str
    as_of: datetime
    reasons: ReasonsMode = "all"
    top: int = TOP_REASONS

    def output_schema(self) -> pa.Schema:
        ts = pa.timestamp("us", tz="UTC")
        return pa.schema([
            pa.field(self.key, pa.string(), nullable=False),
            pa.field("as_of", ts),
            *(pa.field(c, pa.float64()) for c in VALUE_COLUMNS),
            pa.field(TIER, pa.string()),
            pa.field(RFM_SEGMENT, pa.string()),
            pa.field("reasons", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field(FEATURE_TIMESTAMP, ts),
        ])

    def score_table(self, table: pa.Table | pa.RecordBatch, timings: dict[str, float] | None = None) -> pa.Table:
        if isinstance(table, pa.Table):
            if table.num_rows == 0:
                return self.output_schema().empty_table()
            table = table.combine_chunks().to_batches()[0]
        clock = _Clock(timings)
        n = table.num_rows
        x = self.model.encoder.arrow(table)
        clock.lap("prepare")
        names = table.schema.names
        rates = {c: table.column(c) for c in (SPEND_365, TICKETS_365, COMPLAINTS_365) if c in names}
        out = value_outputs(self.model, x, rates, n)
        clock.lap("predict")
        found = pc.is_valid(table.column(FEATURE_TIMESTAMP))
        need = found.to_numpy(zero_copy_only=False)

        def masked(values: np.ndarray, kind: pa.DataType) -> pa.Array:
            # No feature row within the TTL: written (accounted for) with null values.
            return pc.if_else(found, pa.array(values, kind), pa.scalar(None, kind))

        columns = [masked(getattr(out, c), pa.float64()) for c in VALUE_COLUMNS]
        tier = masked(out.tier.astype(str), pa.string())
        if self.reasons == "top":
            need &= np.isin(out.tier.astype(str), TIERS[:TOP_TIERS])
        rows = np.flatnonzero(need) if self.reasons != "none" else np.empty(0, dtype=np.int64)
        clock.lap("calibrate_grade")
        if rows.size:
            contrib = self.model.contributions(x[rows])
            texts = reasons_json(contrib, table.take(pa.array(rows)), self.model.feature_names, self.top)
            position = np.full(n, -1, dtype=np.int64)
            position[rows] = np.arange(rows.size)
            reasons = texts.take(pa.array(position, mask=position < 0))
        else:
            reasons = pa.nulls(n, pa.string())
        clock.lap("reasons")
        segment = (pc.cast(table.column(RFM_SEGMENT), pa.string()) if RFM_SEGMENT in names
                   else pa.nulls(n, pa.string()))
        ts = pa.timestamp("us", tz="UTC")
        return pa.table([
            pc.cast(table.column(self.key), pa.string()),
            pa.array(np.full(n, np.datetime64(self.as_of.astimezone(UTC).replace(tzinfo=None), "us")), ts),
            *columns, tier, segment, reasons,
            pa.array(np.full(n, self.model.version, dtype=object), pa.string()),
            pc.cast(table.column(FEATURE_TIMESTAMP), ts),
        ], schema=self.output_schema())


def score_value(ws: Workspace, as_of: datetime | None, options: ScoreOptions, progress: Progress | None = None,
                *, model: ValueModel | None = None) -> RunManifest:
    """Score the value model's population as of ``as_of`` (default: the newest snapshot)."""
    if options.engine == "spark":
        log.info("clv: the value model scores in-process; --engine spark applies to churn and lead")
    progress = progress or NoProgress()
    model = model or load_value_model(VALUE.model_name)
    # Timed from here, like a binary run (whose champion is loaded before its job starts).
    started_at, started = datetime.now().astimezone(), time.perf_counter()
    as_of = as_utc(as_of) if as_of is not None else default_as_of(ws)
    spec = model.spec.model
    plan = resolve_service(feature_store(ws, options.profile), spec.feature_service)
    missing = [f for f in model.feature_names if f not in plan.features]
    if missing:
        raise CrmscoreError(f"{model.name} v{model.version} needs features that {spec.feature_service} "
                            f"no longer serves: {', '.join(missing[:10])}")
    pop = population(ws.lake, VALUE.key, as_of, spec.mode)
    key = plan.key
    log.info("scoring %s as of %s: %d customers with %s v%s", VALUE.key, f"{as_of:%Y-%m-%d}", pop.height,
             model.name, model.version)
    predictor = ValuePredictor(model, key, as_of, options.reasons)
    stages = StageSeconds()
    with staged_partition(ws.scores, MIGRATION_TABLE, as_of) as migration_staging, \
            staged_partition(ws.scores, VALUE.key, as_of) as staging:
        t0 = time.perf_counter()
        frame = read_features_as_of(plan, pop, as_of)
        table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
        stages.read = time.perf_counter() - t0
        clv, tiers = _score_chunks(predictor, table, staging, options, progress, stages)
        no_features = int(frame.get_column(FEATURE_TIMESTAMP).null_count())
        if no_features and not options.allow_missing:
            raise CrmscoreError(
                f"{VALUE.key} as of {as_of:%Y-%m-%d}: {no_features:,} of {pop.height:,} customers have no "
                f"features (no snapshot within the TTL at or before {as_of:%Y-%m-%d}); build one with "
                f"`crmscore features build --add {as_of:%Y-%m-%d}`, or pass --allow-missing to score them as null"
            )
        finish_started = time.perf_counter()
        written = written_ids(staging, key)
        reconcile(pop.get_column(key), written, f"{VALUE.key} as of {as_of:%Y-%m-%d}")
        migration = _write_migration(ws, staging, migration_staging, key, TIER, as_of)
        stages.finish = time.perf_counter() - finish_started
        result = _DriftInput(frame, clv)
        drift = None
        if options.drift:
            drift_started = time.perf_counter()
            drift = drift_report(VALUE.key, model, as_of, result)
            stages.drift = time.perf_counter() - drift_started
        seconds = time.perf_counter() - started
        manifest = RunManifest(
            task=VALUE.key, as_of=as_of, engine="local", model_name=model.name, model_version=model.version,
            model_alias=model.alias, model_run_id=model.run_id, feature_service=spec.feature_service,
            inputs={"lake": str(ws.lake), **plan.describe(), **build_stamp(ws)},
            entities=pop.height, rows=len(written), no_features=no_features, reasons=options.reasons,
            feature_timestamps=feature_timestamps(result),
            distribution=_distribution(clv, tiers, model.settings.horizon_days),
            seconds=round(seconds, 3), rows_per_second=round(len(written) / max(seconds, 1e-9), 1),
            stages=stages, output=str(partition_dir(ws.scores, VALUE.key, as_of)), started_at=started_at,
            migration=migration.model_dump(mode="json"),
        )
        if drift is not None:
            manifest.drift = drift.summary()
            log_drift(drift, manifest)
            manifest.drift = drift.summary()
        write_manifest(staging, manifest)
    if no_features:
        log.warning("%s: %d of %d customers had no feature snapshot within the TTL before %s; their values "
                    "are null (--allow-missing)", VALUE.key, no_features, pop.height, f"{as_of:%Y-%m-%d}")
    log.info("%s: %d rows in %.1fs → %s; tiers vs the previous run: %s", VALUE.key, manifest.rows, manifest.seconds,
             manifest.output, migration.counts)
    return manifest


@dataclass
class _DriftInput:
    """What the finishing steps (``finish.py``) read of the run."""

    features: pl.DataFrame | None
    probabilities: np.ndarray  # here: clv (the drift report's "score")


def _score_chunks(predictor: ValuePredictor, table: pa.Table, staging: Path, options: ScoreOptions,
                  progress: Progress, stages: StageSeconds) -> tuple[np.ndarray, dict[str, int]]:
    """Score ``table`` in chunks on a thread pool (LightGBM releases the GIL), one part file each."""
    threads = options.threads or os.cpu_count() or 1
    n = table.num_rows
    size = max(1, min(options.chunk_rows, math.ceil(n / threads) if n else 1))

    def work(index: int, offset: int) -> tuple[int, np.ndarray, dict[str, float]]:
        timings: dict[str, float] = {}
        out = predictor.score_table(table.slice(offset, size), timings)
        started = time.perf_counter()
        pq.write_table(out, staging / f"part-{index:05d}.parquet", compression="zstd")
        timings["write"] = time.perf_counter() - started
        return index, out.column("clv").to_numpy(zero_copy_only=False), timings

    progress.start(f"{VALUE.key} ({n:,} rows)", n)
    results: dict[int, np.ndarray] = {}
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool:
            futures = [pool.submit(work, i, off) for i, off in enumerate(range(0, n, size))]
            for future in as_completed(futures):
                index, clv, timings = future.result()
                results[index] = clv
                for stage, seconds in timings.items():
                    setattr(stages, stage, getattr(stages, stage) + seconds)
                progress.advance(len(clv))
    finally:
        progress.stop()
    clv = np.concatenate([results[i] for i in sorted(results)]) if results else np.empty(0)
    tiers = read_tiers(staging, predictor.key, TIER).get_column(TIER).drop_nulls().value_counts()
    counts = {str(t): int(c) for t, c in tiers.iter_rows()}
    return clv, {t: counts.get(t, 0) for t in TIERS}


def _write_migration(ws: Workspace, staging: Path, migration_staging: Path, key: str, tier: str,
                     as_of: datetime) -> MigrationSummary:
    """The migration against the previous run into ``migration_staging`` (swapped in after the scores)."""
    previous = previous_partition(ws.scores, VALUE.key, as_of)
    before = read_tiers(previous, key, tier) if previous is not None else None
    migration = tier_migration(before, read_tiers(staging, key, tier), key, tier, list(TIERS))
    previous_as_of = None
    if previous is not None:
        previous_as_of = datetime.fromisoformat(previous.name.partition("=")[2]).replace(tzinfo=UTC)
    ts = pl.Datetime("us", "UTC")
    out = migration.with_columns(
        pl.lit(as_of).cast(ts).alias("as_of"), pl.lit(previous_as_of, dtype=ts).alias(PREVIOUS_AS_OF),
    ).select(key, "as_of", PREVIOUS_AS_OF, TIER_BEFORE, TIER_AFTER, MOVEMENT)
    out.write_parquet(migration_staging / "part-00000.parquet", compression="zstd")
    return MigrationSummary(previous_as_of=previous_as_of, counts=movement_counts(migration),
                            output=str(partition_dir(ws.scores, MIGRATION_TABLE, as_of)))


def _distribution(clv: np.ndarray, tiers: dict[str, int], horizon_days: int) -> Distribution:
    values = clv[np.isfinite(clv)] if clv.size else clv
    amounts: dict[str, float] = {}
    if values.size:
        amounts = {"total": float(values.sum()), "mean": float(values.mean()), "horizon_days": float(horizon_days)}
        for q in (10, 50, 90, 99):
            amounts[f"p{q}"] = float(np.percentile(values, q))
    return Distribution(grades=tiers, value={k: round(v, 4) for k, v in amounts.items()})
