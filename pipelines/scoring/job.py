"""``crmscore score``: score every active customer / open lead with the champion.

One run = one task at one ``as_of`` date:

1. resolve: the champion (``training.model.load_model``), its feature service's
   offline tables (from the Feast registry), the population at ``as_of``
   (``features.labels`` population functions);
2. read the population's features as of the date (``inputs.read_features_as_of``);
3. score in chunks — the local engine runs ``BinaryPredictor.score_table`` in a
   thread pool (LightGBM releases the GIL), each worker writing its own part file;
   the Spark engine runs the same predictor in ``mapInArrow``;
4. reconcile: the ids read back from the written files must be exactly the
   population, or the run fails naming the missing ones;
5. drift report against the champion's holdout (``pipelines.drift``), logged to MLflow;
6. manifest, then the staged partition is swapped in (``table.staged_partition``).

Steps 2–5 happen in a staging directory; only step 6 touches the published
table, so a failure anywhere leaves the previous output as it was.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl
from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from features.catalog import SCORE_GRADE_COLUMN
from pipelines.scoring.inputs import (
    ServiceRead,
    default_as_of,
    population,
    read_features_as_of,
    resolve_service,
)
from pipelines.scoring.predict import FEATURE_TIMESTAMP, BinaryPredictor, ReasonsMode
from pipelines.scoring.table import (
    Distribution,
    RunManifest,
    StageSeconds,
    reconcile,
    staged_partition,
    write_manifest,
)

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("churn", "lead", "nbp")
Engine = Literal["local", "spark"]
#: Registered model of each task (the names the trainers register).
MODEL_NAMES: dict[str, str] = {
    "churn": "crm-churn", "lead": "crm-lead-scoring", "nbp": "crm-next-best-product",
}


class ScoreOptions(BaseModel):
    """How to run a scoring job (the CLI's options, validated once)."""

    engine: Engine = "local"
    reasons: ReasonsMode = Field("all", description="top reasons for all rows, the top grades only, or none "
                                                   "(TreeSHAP: ~100-200x the cost of a predict)")
    chunk_rows: int = Field(100_000, ge=1, description="rows per chunk (and per part file)")
    threads: int | None = Field(None, ge=1, description="worker threads (default: all cores)")
    drift: bool = Field(True, description="compare with the champion's holdout and log to MLflow")
    profile: str = "local"
    spark_master: str | None = None
    top_products: int = Field(10, ge=1, description="next-best-product: products per customer")


class Progress(Protocol):
    """Where a run reports progress (the CLI passes a rich progress bar)."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def stop(self) -> None: ...


class _NoProgress:
    def start(self, description: str, total: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def stop(self) -> None: ...


@dataclass
class EngineResult:
    """What an engine hands back to the job: the stage timings, the scores for the
    summary and drift, and the feature frame drift compares (a sample under Spark)."""

    stages: StageSeconds
    probabilities: np.ndarray
    grades: dict[str, int]
    features: pl.DataFrame | None
    no_features: int
    extra_inputs: dict[str, str] = field(default_factory=dict)


# --- entry points ------------------------------------------------------------------------


def score(ws: Workspace, task: str, as_of: datetime | None = None, options: ScoreOptions | None = None,
          progress: Progress | None = None) -> RunManifest:
    """Score one task (churn, lead or nbp) as of a date (default: the newest snapshot)."""
    options = options or ScoreOptions()
    if task == "nbp":
        from pipelines.scoring.nbp import score_nbp

        return score_nbp(ws, as_of, options, progress)
    if task not in ("churn", "lead"):
        raise CrmscoreError(f"unknown task {task!r}: expected churn, lead, nbp or all")
    from training.model import load_model

    return score_binary(ws, task, load_model(MODEL_NAMES[task]), as_of, options, progress)


class Skipped(BaseModel):
    task: str
    reason: str


def score_all(ws: Workspace, as_of: datetime | None = None, options: ScoreOptions | None = None,
              progress: Progress | None = None) -> list[RunManifest | Skipped]:
    """Every task that has a champion; a task without one is skipped and says why."""
    from training.registry import CHAMPION, configure_mlflow, version_by_alias

    client = configure_mlflow()
    out: list[RunManifest | Skipped] = []
    for task in TASKS:
        if version_by_alias(client, MODEL_NAMES[task], CHAMPION) is None:
            reason = f"{MODEL_NAMES[task]} has no champion (train it with `crmscore train {task}`)"
            log.warning("score all: skipping %s: %s", task, reason)
            out.append(Skipped(task=task, reason=reason))
            continue
        out.append(score(ws, task, as_of, options, progress))
    if all(isinstance(r, Skipped) for r in out):
        raise CrmscoreError("no model has a champion yet: run `crmscore train churn|lead|nbp` first")
    return out


# --- churn and lead ----------------------------------------------------------------------------


def score_binary(ws: Workspace, task: str, model: Any, as_of: datetime | None, options: ScoreOptions,
                 progress: Progress | None = None, *, entities: pl.DataFrame | None = None,
                 plan: ServiceRead | None = None) -> RunManifest:
    """Score a binary model's population (``entities`` overrides it: benchmarks, tests)."""
    from features.store import feature_store

    started_at, started = datetime.now().astimezone(), time.perf_counter()
    as_of = as_utc(as_of) if as_of is not None else default_as_of(ws)
    spec = model.spec
    if plan is None:
        plan = resolve_service(feature_store(ws, options.profile), spec.feature_service)
    missing = [f for f in spec.features if f not in plan.features]
    if missing:
        raise CrmscoreError(f"{model.name} v{model.version} needs features that {spec.feature_service} "
                            f"no longer serves: {', '.join(missing[:10])}")
    pop = entities if entities is not None else population(ws.lake, task, as_of, spec.mode)
    key = plan.key
    log.info("scoring %s as of %s: %d entities with %s v%s (%s engine)", task, f"{as_of:%Y-%m-%d}",
             pop.height, model.name, model.version, options.engine)
    predictor = BinaryPredictor.from_model(model, task, SCORE_GRADE_COLUMN[task], as_of, options.reasons)
    with staged_partition(ws.scores, task, as_of) as staging:
        if options.engine == "spark":
            from pipelines.spark_engine import score_with_spark

            result = score_with_spark(plan, pop, as_of, predictor, staging, options, progress)
        else:
            result = score_local(plan, pop, as_of, predictor, staging, options, progress)
        finish_started = time.perf_counter()
        written = written_ids(staging, key)
        reconcile(pop.get_column(key), written, f"{task} as of {as_of:%Y-%m-%d}")
        result.stages.finish = time.perf_counter() - finish_started
        drift = None
        if options.drift:
            drift_started = time.perf_counter()
            drift = _drift(ws, task, model, plan, predictor, as_of, result)
            result.stages.drift = time.perf_counter() - drift_started
        seconds = time.perf_counter() - started
        manifest = RunManifest(
            task=task, as_of=as_of, engine=options.engine, model_name=model.name, model_version=model.version,
            model_alias=model.alias, model_run_id=model.run_id, feature_service=spec.feature_service,
            inputs={"lake": str(ws.lake), **plan.describe(), **_build_stamp(ws), **result.extra_inputs},
            entities=pop.height, rows=len(written), no_features=result.no_features, reasons=options.reasons,
            distribution=_distribution(result.probabilities, result.grades, predictor.grading.labels),
            seconds=round(seconds, 3), rows_per_second=round(len(written) / max(seconds, 1e-9), 1),
            stages=result.stages, output=str(_partition_path(ws, task, as_of)), started_at=started_at,
        )
        if drift is not None:
            manifest.drift = drift.summary()
            _log_drift(drift, manifest)  # the MLflow run keeps this manifest too
            manifest.drift = drift.summary()  # now with the MLflow run id
        write_manifest(staging, manifest)
    if result.no_features:
        log.warning("%s: %d of %d entities had no feature snapshot within the TTL before %s; "
                    "their scores are null (build features at that date)", task, result.no_features,
                    pop.height, f"{as_of:%Y-%m-%d}")
    log.info("%s: %d rows in %.1fs (%.0f rows/s) → %s", task, manifest.rows, manifest.seconds,
             manifest.rows_per_second, manifest.output)
    return manifest


def score_local(plan: ServiceRead, pop: pl.DataFrame, as_of: datetime, predictor: BinaryPredictor,
                staging: Path, options: ScoreOptions, progress: Progress | None = None) -> EngineResult:
    """The in-process engine: chunks of the feature frame scored by a thread pool."""
    import pyarrow.parquet as pq

    progress = progress or _NoProgress()
    stages = StageSeconds()
    t0 = time.perf_counter()
    frame = read_features_as_of(plan, pop, as_of)
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    stages.read = time.perf_counter() - t0
    threads = options.threads or os.cpu_count() or 1
    n = table.num_rows
    # Enough chunks to keep every thread busy, none larger than chunk_rows.
    size = max(1, min(options.chunk_rows, math.ceil(n / threads) if n else 1))
    offsets = list(range(0, n, size))

    def work(index: int, offset: int) -> tuple[int, np.ndarray, dict[str, int], dict[str, float]]:
        timings: dict[str, float] = {}
        out = predictor.score_table(table.slice(offset, size), timings)
        started = time.perf_counter()
        pq.write_table(out, staging / f"part-{index:05d}.parquet", compression="zstd")
        timings["write"] = time.perf_counter() - started
        probabilities = out.column("probability").to_numpy(zero_copy_only=False)
        return index, probabilities, grade_counts(out, predictor.grade_column), timings

    progress.start(f"{predictor.task} ({n:,} rows)", n)
    results: dict[int, np.ndarray] = {}
    grades: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool:
            futures = {pool.submit(work, i, off): off for i, off in enumerate(offsets)}
            for future in as_completed(futures):
                index, probabilities, counts, timings = future.result()
                results[index] = probabilities
                for k, v in counts.items():
                    grades[k] = grades.get(k, 0) + v
                for stage, seconds in timings.items():
                    setattr(stages, stage, getattr(stages, stage) + seconds)
                progress.advance(len(probabilities))
    finally:
        progress.stop()
    probabilities = np.concatenate([results[i] for i in sorted(results)]) if results else np.empty(0)
    no_features = int(frame.get_column(FEATURE_TIMESTAMP).null_count())
    return EngineResult(stages=stages, probabilities=probabilities, grades=grades, features=frame,
                        no_features=no_features)


def grade_counts(out: Any, column: str) -> dict[str, int]:
    """Rows per grade/band of a scored Arrow table (nulls not counted)."""
    import pyarrow.compute as pc

    counts = pc.value_counts(out.column(column).combine_chunks())
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] is not None}


# --- finishing -------------------------------------------------------------------------------


def written_ids(staging: Path, key: str) -> pl.Series:
    """The ids actually on disk in the staged partition (what readers will see)."""
    files = sorted(staging.glob("*.parquet"))
    if not files:
        return pl.Series(key, [], dtype=pl.String)
    return pl.read_parquet(files, columns=[key]).get_column(key)


def _distribution(p: np.ndarray, grades: dict[str, int], order: list[str]) -> Distribution:
    p = p[np.isfinite(p)] if p.size else p
    probability: dict[str, float] = {}
    if p.size:
        probability = {"mean": float(p.mean()), "min": float(p.min()), "max": float(p.max())}
        for q in (10, 25, 50, 75, 90):
            probability[f"p{q}"] = float(np.percentile(p, q))
    ordered = {g: grades.get(g, 0) for g in order}
    return Distribution(grades=ordered, probability={k: round(v, 6) for k, v in probability.items()})


def _build_stamp(ws: Workspace) -> dict[str, str]:
    from features.build import read_build_summary

    try:
        built = read_build_summary(ws.feature_tables).built_at
    except CrmscoreError:
        return {}
    return {"features built_at": built.isoformat()}


def _partition_path(ws: Workspace, task: str, as_of: datetime) -> Path:
    from pipelines.scoring.table import partition_dir

    return partition_dir(ws.scores, task, as_of)


def _drift(ws: Workspace, task: str, model: Any, plan: ServiceRead, predictor: BinaryPredictor,
           as_of: datetime, result: EngineResult) -> Any:
    """The drift report of this run (None-safe: a missing reference is a note, not a failure)."""
    from pipelines import drift as drift_mod

    report = drift_mod.DriftReport(task=task, model_name=model.name, model_version=model.version, as_of=as_of,
                                   reference="the champion's holdout: population and features as of "
                                             "its holdout_cutoff")
    try:
        reference = _reference(ws, task, model, plan)
    except CrmscoreError as exc:
        report.note = f"no reference: {exc}"
        log.warning("%s drift: %s", task, report.note)
        return report
    ref_frame, cutoff, note = reference
    report.reference_cutoff, report.note = cutoff, note
    current = result.features
    if current is None or ref_frame.height == 0:
        report.note = (note or "") + " no rows to compare"
        return report
    current = current.filter(pl.col(FEATURE_TIMESTAMP).is_not_null())
    ref_frame = ref_frame.filter(pl.col(FEATURE_TIMESTAMP).is_not_null())
    ref_scores = predictor.probabilities(ref_frame.to_arrow(compat_level=pl.CompatLevel.oldest()))
    cur_scores = result.probabilities[np.isfinite(result.probabilities)]
    report.reference_rows, report.current_rows = ref_frame.height, current.height
    report.features, report.score_psi = drift_mod.compare(
        ref_frame, current, list(model.spec.features), set(model.spec.categories), ref_scores, cur_scores)
    drift_mod.finish(report)
    return report


def _reference(ws: Workspace, task: str, model: Any, plan: ServiceRead) -> tuple[pl.DataFrame, datetime, str | None]:
    """The champion's holdout rows, rebuilt (see pipelines/drift.py)."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from training.registry import configure_mlflow

    if not model.run_id:
        raise CrmscoreError(f"{model.name} v{model.version} has no training run")
    try:
        params = configure_mlflow().get_run(model.run_id).data.params
    except MlflowException as exc:
        raise CrmscoreError(f"training run {model.run_id} cannot be read ({exc})") from None
    if "holdout_cutoff" not in params:
        raise CrmscoreError(f"training run {model.run_id} has no holdout_cutoff param")
    cutoff = as_utc(pd.Timestamp(params["holdout_cutoff"]).to_pydatetime())
    pop = population(ws.lake, task, cutoff, model.spec.mode)
    frame = read_features_as_of(plan, pop, cutoff)
    found = frame.get_column(FEATURE_TIMESTAMP).is_not_null().sum()
    if found == 0:
        raise CrmscoreError(f"no feature snapshot within the TTL of the holdout cutoff {cutoff:%Y-%m-%d} "
                            "(features were rebuilt without it)")
    note = None
    expected = params.get("holdout_rows")
    if expected is not None and int(expected) != frame.height:
        note = (f"the rebuilt holdout has {frame.height} rows, the training run logged {expected} "
                "(the lake or features changed since training)")
    return frame, cutoff, note


def _log_drift(report: Any, manifest: RunManifest) -> None:
    from pipelines.drift import log_to_mlflow

    try:
        report.mlflow_run_id = log_to_mlflow(report, manifest.model_dump(mode="json"))
    except Exception as exc:  # noqa: BLE001 - the scores are good; a tracking hiccup must not lose them
        log.warning("%s drift: could not log to MLflow (%s: %s)", report.task, type(exc).__name__, exc)


ProgressFactory = Callable[[], Progress]
