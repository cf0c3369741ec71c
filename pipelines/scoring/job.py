"""``crmscore score``: score every active customer / open lead with the champion.

One run = one task at one ``as_of`` date:

1. resolve: the champion (``training.model.load_model``), its feature service's
   offline tables (from the Feast registry), the population at ``as_of``
   (the task's population rule, ``training.tasks``);
2. read the population's features as of the date (``inputs.read_features_as_of``);
3. score in chunks — the local engine (``local.py``) runs ``BinaryPredictor.score_table``
   in a thread pool, each worker writing its own part file; the Spark engine
   (``spark.py``) runs the same predictor in ``mapInArrow``;
4. reconcile: the ids read back from the written files must be exactly the
   population, or the run fails naming the missing ones;
5. drift report against the champion's holdout histograms (``pipelines.drift``), logged to MLflow;
6. manifest, then the staged partition is swapped in (``table.staged_partition``).

Steps 2–5 happen in a staging directory; only step 6 touches the published
table, so a failure anywhere leaves the previous output as it was. A recommender
task (next-best-product) is scored by ``nbp.py`` instead, customer value by ``value.py``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.lake import check_as_of
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from features.build import add_snapshots
from features.store import feature_store
from pipelines.scoring.finish import build_stamp, drift_report, feature_timestamps, log_drift
from pipelines.scoring.inputs import (
    ServiceRead,
    default_as_of,
    population,
    resolve_service,
)
from pipelines.scoring.local import score_local
from pipelines.scoring.nbp import score_nbp
from pipelines.scoring.predict import BinaryPredictor
from pipelines.scoring.spark import score_with_spark
from pipelines.scoring.table import (
    Distribution,
    RunManifest,
    partition_dir,
    reconcile,
    staged_partition,
    write_manifest,
    written_ids,
)
from pipelines.scoring.types import Progress, ScoreOptions, Skipped
from pipelines.scoring.value import score_value
from training.model import ScoringModel, load_model
from training.registry import CHAMPION, configure_mlflow, version_by_alias
from training.tasks import TASKS, get_task

log = logging.getLogger(__name__)

#: How long after the lake's last event a scoring date may be: the default snapshot grid's
#: newest date is the Monday after the last event, and it sees every event.
SCORE_AFTER_LAST_EVENT = timedelta(days=7)


# --- entry points ------------------------------------------------------------------------


def score(ws: Workspace, task: str, as_of: datetime | None = None, options: ScoreOptions | None = None,
          progress: Progress | None = None) -> RunManifest:
    """Score one task of the registry as of a date (default: the newest snapshot)."""
    options = options or ScoreOptions()
    spec = get_task(task)
    if as_of is not None:
        # A date the feature tables have no snapshot at gets one built now: an older snapshot
        # would describe the customers as they were then, not at as_of.
        as_of = check_as_of(ws.lake, as_of, slack=SCORE_AFTER_LAST_EVENT)
        add_snapshots(ws.lake, ws.feature_tables, [as_of])
    if spec.scorer == "recommender":
        return score_nbp(ws, as_of, options, progress)
    if spec.scorer == "value":
        return score_value(ws, as_of, options, progress)
    return score_binary(ws, spec.key, load_model(spec.model_name), as_of, options, progress)


def score_all(ws: Workspace, as_of: datetime | None = None, options: ScoreOptions | None = None,
              progress: Progress | None = None) -> list[RunManifest | Skipped]:
    """Every task that has a champion; a task without one is skipped and says why."""
    client = configure_mlflow()
    out: list[RunManifest | Skipped] = []
    for task in TASKS.values():
        if version_by_alias(client, task.model_name, CHAMPION) is None:
            reason = f"{task.model_name} has no champion (train it with `crmscore train {task.key}`)"
            log.warning("score all: skipping %s: %s", task.key, reason)
            out.append(Skipped(task=task.key, reason=reason))
            continue
        out.append(score(ws, task.key, as_of, options, progress))
    if all(isinstance(r, Skipped) for r in out):
        raise CrmscoreError(f"no model has a champion yet: run `crmscore train {'|'.join(TASKS)}` first")
    return out


# --- binary models (churn, lead) -------------------------------------------------------------


def score_binary(ws: Workspace, task: str, model: ScoringModel, as_of: datetime | None, options: ScoreOptions,
                 progress: Progress | None = None, *, entities: pl.DataFrame | None = None,
                 plan: ServiceRead | None = None) -> RunManifest:
    """Score a binary model's population (``entities`` overrides it: benchmarks, tests)."""
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
    predictor = BinaryPredictor.from_model(model, task, get_task(task).grade_column, as_of, options.reasons)
    with staged_partition(ws.scores, task, as_of) as staging:
        if options.engine == "spark":
            result = score_with_spark(plan, pop, as_of, predictor, staging, options, progress)
        else:
            result = score_local(plan, pop, as_of, predictor, staging, options, progress)
        if result.no_features and not options.allow_missing:
            # Raised inside the staging directory: nothing is published.
            raise CrmscoreError(
                f"{task} as of {as_of:%Y-%m-%d}: {result.no_features:,} of {pop.height:,} entities have no "
                f"features (no snapshot within the TTL at or before {as_of:%Y-%m-%d}); build one with "
                f"`crmscore features build --add {as_of:%Y-%m-%d}`, or pass --allow-missing to score them as null"
            )
        finish_started = time.perf_counter()
        written = written_ids(staging, key)
        reconcile(pop.get_column(key), written, f"{task} as of {as_of:%Y-%m-%d}")
        result.stages.finish = time.perf_counter() - finish_started
        drift = None
        if options.drift:
            drift_started = time.perf_counter()
            drift = drift_report(task, model, as_of, result)
            result.stages.drift = time.perf_counter() - drift_started
        seconds = time.perf_counter() - started
        manifest = RunManifest(
            task=task, as_of=as_of, engine=options.engine, model_name=model.name, model_version=model.version,
            model_alias=model.alias, model_run_id=model.run_id, feature_service=spec.feature_service,
            inputs={"lake": str(ws.lake), **plan.describe(), **build_stamp(ws), **result.extra_inputs},
            entities=pop.height, rows=len(written), no_features=result.no_features, reasons=options.reasons,
            feature_timestamps=feature_timestamps(result),
            distribution=_distribution(result.probabilities, result.grades, predictor.grading.labels),
            seconds=round(seconds, 3), rows_per_second=round(len(written) / max(seconds, 1e-9), 1),
            stages=result.stages, output=str(partition_dir(ws.scores, task, as_of)), started_at=started_at,
        )
        if drift is not None:
            manifest.drift = drift.summary()
            log_drift(drift, manifest)  # the MLflow run keeps this manifest too
            manifest.drift = drift.summary()  # now with the MLflow run id
        write_manifest(staging, manifest)
    if result.no_features:
        log.warning("%s: %d of %d entities had no feature snapshot within the TTL before %s; "
                    "their scores are null (--allow-missing)", task, result.no_features,
                    pop.height, f"{as_of:%Y-%m-%d}")
    log.info("%s: %d rows in %.1fs (%.0f rows/s) → %s", task, manifest.rows, manifest.seconds,
             manifest.rows_per_second, manifest.output)
    return manifest


# --- finishing -------------------------------------------------------------------------------


def _distribution(p: np.ndarray, grades: dict[str, int], order: list[str]) -> Distribution:
    p = p[np.isfinite(p)] if p.size else p
    probability: dict[str, float] = {}
    if p.size:
        probability = {"mean": float(p.mean()), "min": float(p.min()), "max": float(p.max())}
        for q in (10, 25, 50, 75, 90):
            probability[f"p{q}"] = float(np.percentile(p, q))
    ordered = {g: grades.get(g, 0) for g in order}
    return Distribution(grades=ordered, probability={k: round(v, 6) for k, v in probability.items()})
