"""The binary-classification trainer shared by lead scoring and churn risk.

Input: a point-in-time training frame (one row per entity × cutoff, features of
one feature service, a 0/1 label) plus baseline and, on synthetic worlds, oracle
scores for the same rows. The frame is split by time: the newest cutoff is the
holdout (evaluation and the promotion gate), the one before it the validation
fold (early stopping, calibration, grade thresholds), the rest train. Labels
brought at fewer than three dates cannot be split by time: they are split at
random by entity instead (``split="entity"``), and the model is cross-sectional.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature
from pydantic import BaseModel

from crmdata.errors import CrmscoreError
from training import inputs, plots
from training.calibration import Calibrator, Grading
from training.drift_reference import ARTIFACT as DRIFT_REFERENCE
from training.drift_reference import DriftReference
from training.metrics import evaluate, flatten
from training.model import (
    ModelSpec,
    ScoringModel,
    fit_categories,
    prepare_features,
    save_model_files,
)
from training.registry import (
    CHAMPION,
    Registration,
    configure_mlflow,
    ensure_experiment,
    git_commit,
    register_and_gate,
    version_by_alias,
)

log = logging.getLogger(__name__)

CUTOFF = "event_timestamp"
LABEL = "label"
#: A challenger may be this much worse in holdout log loss and still be promoted on AUC.
LOG_LOSS_TOLERANCE = 0.002

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    # No num_threads: LightGBM then follows OMP_NUM_THREADS (all cores by default), so a
    # test run with parallel workers can set it to 1 instead of oversubscribing the cores.
    "verbose": -1,
    "seed": 7,
}
MAX_ROUNDS = 2000
EARLY_STOPPING = 100
#: Shares of entities in the train and validation folds of a split by entity (the rest: holdout).
ENTITY_SPLIT = (0.6, 0.2)

Split = Literal["time", "entity"]


@dataclass(frozen=True)
class BinaryTask:
    """What differs between lead scoring and churn risk."""

    spec: ModelSpec
    segment_column: str
    grading: tuple[list[str], list[float]]
    baseline_name: str
    positive_noun: str  # "churned customers"
    negative_noun: str  # "retained customers"
    min_positives: int = 200
    min_negatives: int = 200
    min_cutoffs: int = 4
    extra_params: dict[str, Any] = field(default_factory=dict)
    #: Where the labels come from, for a too-little-data error ("churn labels come from
    #: subscription end dates"), and what the user can do about it.
    label_source: str = ""
    advice: str = ""
    #: "time": train on the older cutoffs, validate and hold out the two newest (a forecast).
    #: "entity": labels at too few dates for that; a stratified random split by entity.
    split: Split = "time"


class TrainResult(BaseModel):
    """What `crmscore train ... --json` prints."""

    model: str
    version: str
    run_id: str
    alias: str
    metrics: dict
    baseline: dict
    oracle: dict | None
    promoted: bool
    reason: str
    seconds: dict[str, float] = {}


def check_minimum_data(frame: pd.DataFrame, task: BinaryTask) -> None:
    """Refuse to train on too little evidence, saying what is missing and how much."""
    advice = f"; {task.advice}" if task.advice else ""
    if task.split == "entity":
        for count, noun in ((int(frame[LABEL].sum()), task.positive_noun),
                            (int(len(frame) - frame[LABEL].sum()), task.negative_noun)):
            least = task.min_positives if noun == task.positive_noun else task.min_negatives
            if count < least:
                raise CrmscoreError(f"need ≥ {least} {noun} in the labels, found {count}: "
                                    f"{task.label_source}{advice}")
        return
    cutoffs = frame[CUTOFF].nunique()
    if cutoffs < task.min_cutoffs:
        raise CrmscoreError(
            f"need ≥ {task.min_cutoffs} cutoffs with labels (train, validation, holdout), found {cutoffs}{advice}"
        )
    last_two = sorted(frame[CUTOFF].unique())[-2:]
    train = frame[~frame[CUTOFF].isin(last_two)]
    positives = int(train[LABEL].sum())
    negatives = int(len(train) - positives)

    def why(found: int) -> str:
        # What was counted and where: the label's source and the windows it was looked for in.
        stamps = sorted(pd.to_datetime(train[CUTOFF].unique(), utc=True))
        where = (f"the {task.spec.label_window_days}-day windows after the cutoffs "
                 f"{stamps[0]:%Y-%m-%d} … {stamps[-1]:%Y-%m-%d}") if stamps else "the training cutoffs"
        source = f"{task.label_source}, and " if task.label_source else ""
        return f": {source}{'none' if found == 0 else f'only {found}'} fall inside {where}{advice}"

    if positives < task.min_positives:
        raise CrmscoreError(
            f"need ≥ {task.min_positives} {task.positive_noun} in the training cutoffs, found {positives}"
            + why(positives)
        )
    if negatives < task.min_negatives:
        raise CrmscoreError(
            f"need ≥ {task.min_negatives} {task.negative_noun} in the training cutoffs, found {negatives}"
            + why(negatives)
        )
    for fold, cutoff in zip(("validation", "holdout"), last_two, strict=True):
        labels = frame.loc[frame[CUTOFF] == cutoff, LABEL]
        if labels.nunique() < 2:
            raise CrmscoreError(
                f"the {fold} cutoff {pd.Timestamp(cutoff):%Y-%m-%d} has only one class "
                f"({len(labels)} rows, {int(labels.sum())} {task.positive_noun})"
            )


def split_by_time(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    cutoffs = sorted(frame[CUTOFF].unique())
    holdout = frame[frame[CUTOFF] == cutoffs[-1]]
    valid = frame[frame[CUTOFF] == cutoffs[-2]]
    train = frame[frame[CUTOFF].isin(cutoffs[:-2])]
    return train, valid, holdout


def split_by_entity(frame: pd.DataFrame, key: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, validation and holdout folds of entities drawn at random, stratified by label
    (an entity whose label is ever 1 counts as positive), every row of an entity in one fold."""
    from sklearn.model_selection import train_test_split

    entities = frame.groupby(key, sort=True)[LABEL].max()
    train_share, valid_share = ENTITY_SPLIT
    train_ids, rest = train_test_split(entities.index, train_size=train_share, stratify=entities, random_state=7)
    valid_ids, _ = train_test_split(rest, train_size=valid_share / (1 - train_share), stratify=entities[rest],
                                    random_state=7)
    in_train, in_valid = frame[key].isin(train_ids), frame[key].isin(valid_ids)
    return frame[in_train], frame[in_valid], frame[~in_train & ~in_valid]


def pinned_requirements(*packages: str) -> list[str]:
    """``name==version`` of installed packages, for a logged model's environment."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in packages]


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the training frame, to tell whether two runs saw the same data."""
    hashed = pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def fit_booster(params: dict[str, Any], x_train: pd.DataFrame, y_train: np.ndarray,
                x_valid: pd.DataFrame, y_valid: np.ndarray, categorical: list[str]) -> lgb.Booster:
    train_set = lgb.Dataset(x_train, y_train, categorical_feature=categorical, free_raw_data=False)
    valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set)
    return lgb.train(
        {**params, "metric": ["auc", "binary_logloss"]},
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, first_metric_only=False, verbose=False)],
    )


def tune(params: dict[str, Any], trials: int, x_train: pd.DataFrame, y_train: np.ndarray,
         x_valid: pd.DataFrame, y_valid: np.ndarray, categorical: list[str]) -> dict[str, Any]:
    """Optuna search on the validation fold; each trial is a nested MLflow run."""
    import optuna
    from sklearn.metrics import roc_auc_score

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        candidate = {
            **params,
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 500, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
        }
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            booster = fit_booster(candidate, x_train, y_train, x_valid, y_valid, categorical)
            auc = float(roc_auc_score(y_valid, booster.predict(x_valid)))
            mlflow.log_params({k: candidate[k] for k in trial.params})
            mlflow.log_metrics({"valid_roc_auc": auc, "best_iteration": booster.best_iteration})
        return auc

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=7))
    study.optimize(objective, n_trials=trials)
    log.info("tuning: best validation AUC %.4f after %d trials", study.best_value, trials)
    return {**params, **study.best_params}


def gate(client: MlflowClient, spec: ModelSpec, holdout: pd.DataFrame, y: np.ndarray,
         new: dict[str, float], load: Callable[[str], ScoringModel]) -> tuple[bool, str]:
    """Promote only if there is no champion, or the challenger beats it on the same holdout rows."""
    from sklearn.metrics import log_loss, roc_auc_score

    current = version_by_alias(client, spec.model_name, CHAMPION)
    if current is None:
        return True, "no champion yet"
    try:
        champion = load(str(current.version))
    except CrmscoreError as exc:
        return False, f"champion v{current.version} cannot be loaded ({exc}); promote by hand"
    target = (spec.mode, spec.label_window_days, spec.label_table)
    if (champion.spec.mode, champion.spec.label_window_days, champion.spec.label_table) != target:
        # Another target (e.g. transactional vs subscription churn, labels brought vs derived):
        # AUCs are not comparable.
        labels = (f", labels from {champion.spec.label_table or 'events'}"
                  if champion.spec.label_table != spec.label_table else "")
        return False, (f"champion v{current.version} predicts another target "
                       f"({champion.spec.mode or 'default'} mode, {champion.spec.label_window_days} days"
                       f"{labels}); promote by hand if this one should replace it")
    try:
        p = champion.predict_proba(holdout)
    except CrmscoreError as exc:
        # The champion cannot score today's feature service (e.g. features were renamed):
        # it cannot be compared, so a person must decide.
        return False, f"champion v{current.version} cannot score this holdout ({exc}); promote by hand"
    champ_auc, champ_ll = float(roc_auc_score(y, p)), float(log_loss(y, p, labels=[0, 1]))
    auc, ll = new["roc_auc"], new["log_loss"]
    facts = (f"AUC {auc:.4f} vs champion v{current.version} {champ_auc:.4f}, "
             f"log loss {ll:.4f} vs {champ_ll:.4f} on the same {len(y)} holdout rows")
    if auc > champ_auc and ll <= champ_ll + LOG_LOSS_TOLERANCE:
        return True, f"beats the champion: {facts}"
    return False, f"does not beat the champion: {facts}"


def train_binary(task: BinaryTask, frame: pd.DataFrame, baseline: np.ndarray, oracle: np.ndarray | None,
                 params: dict[str, Any] | None = None, tune_trials: int = 0,
                 extra_tags: dict[str, str] | None = None, source: Path | None = None,
                 register: bool = True) -> TrainResult:
    """Fit, calibrate, evaluate, log, register and (maybe) promote one model.

    ``register=False`` (a backtest fold) logs the run and its model but registers no
    version and moves no alias; inside an active run (the backtest's) the run is nested.

    ``source`` is where ``frame`` was read from (the workspace's feature tables), for
    the run's logged inputs.

    ``baseline`` is the non-ML rule's score in (0, 1) for every row of ``frame``;
    ``oracle`` the true probability (synthetic worlds) or None.
    """
    from training.model import load_model

    timings: dict[str, float] = {}
    spec = task.spec
    check_minimum_data(frame, task)
    frame = frame.reset_index(drop=True)
    order = frame[CUTOFF].argsort(kind="stable")
    frame, baseline = frame.iloc[order].reset_index(drop=True), np.asarray(baseline)[order]
    oracle = None if oracle is None else np.asarray(oracle)[order]
    train, valid, holdout = split_by_time(frame) if task.split == "time" else split_by_entity(frame, spec.entity_key)
    spec = spec.model_copy(update={"categories": fit_categories(train, list(spec.categories))})
    x_train, x_valid, x_hold = (prepare_features(f, spec) for f in (train, valid, holdout))
    y_train, y_valid, y_hold = (f[LABEL].to_numpy(dtype=int) for f in (train, valid, holdout))
    params = {**DEFAULT_PARAMS, **task.extra_params, **(params or {})}

    client = configure_mlflow()
    ensure_experiment(client, spec.model_name)
    with mlflow.start_run(run_name=f"{spec.task}-{time.strftime('%Y%m%d-%H%M%S')}",
                          nested=mlflow.active_run() is not None) as run:
        started = time.perf_counter()
        if tune_trials:
            params = tune(params, tune_trials, x_train, y_train, x_valid, y_valid, list(spec.categories))
            timings["tune"] = time.perf_counter() - started
        fit_started = time.perf_counter()
        booster = fit_booster(params, x_train, y_train, x_valid, y_valid, list(spec.categories))
        timings["fit"] = time.perf_counter() - fit_started

        calibrator = Calibrator.fit(booster.predict(x_valid), y_valid, method="isotonic")
        grading = Grading.fit(calibrator.apply(booster.predict(x_valid)), *task.grading)
        p_hold = calibrator.apply(booster.predict(x_hold))
        segments = holdout[task.segment_column].astype(str).to_numpy()
        metrics = evaluate(y_hold, p_hold, segments)
        # A rule gives points, not probabilities: map them to the validation fold's observed
        # rates with a (strictly monotone) Platt fit, which keeps the rule's ranking and AUC.
        base_cal = Calibrator.fit(baseline[valid.index], y_valid, method="platt")
        base_hold = base_cal.apply(baseline[holdout.index])
        base_metrics = evaluate(y_hold, base_hold, segments)
        oracle_metrics = None if oracle is None else evaluate(y_hold, oracle[holdout.index], segments)

        log_started = time.perf_counter()
        mlflow.log_params({**{k: v for k, v in params.items() if k != "verbose"},
                           "best_iteration": booster.best_iteration, "mode": spec.mode,
                           "label_window_days": spec.label_window_days,
                           "train_rows": len(train), "valid_rows": len(valid), "holdout_rows": len(holdout),
                           "holdout_cutoff": str(holdout[CUTOFF].iloc[0])})
        for context, fold in (("training", train), ("validation", valid), ("holdout", holdout)):
            inputs.log_frame(fold, name=spec.feature_service, context=context, source=source,
                             digest=fingerprint(fold), target=LABEL, cutoff_column=CUTOFF)
        mlflow.log_metrics(flatten(metrics))
        mlflow.log_metrics(flatten(base_metrics, prefix="baseline."))
        if oracle_metrics:
            mlflow.log_metrics(flatten(oracle_metrics, prefix="oracle."))
        mlflow.set_tags({
            "feature_service": spec.feature_service,
            "feature_service_version": spec.feature_service.rsplit("_v", 1)[-1],
            "data_fingerprint": fingerprint(frame),
            "git_commit": git_commit(),
            "baseline": task.baseline_name,
            "split": task.split,
            # Said where people look: a random split by entity measures ranking, not forecasting.
            **({"cross_sectional": "true"} if task.split == "entity" else {}),
            **(extra_tags or {}),
        })
        scores = {"model": p_hold, f"baseline ({task.baseline_name})": base_hold}
        if oracle is not None:
            scores["oracle"] = oracle[holdout.index]
        _log_artifacts(booster, x_hold, y_hold, scores, metrics, base_metrics, oracle_metrics, task, grading)
        # Drift compares scoring runs with these histograms, so it never needs the holdout's snapshot again.
        reference = DriftReference.of_holdout(holdout, spec.features, set(spec.categories), p_hold,
                                              holdout[CUTOFF].iloc[0])
        mlflow.log_dict(reference.model_dump(mode="json"), DRIFT_REFERENCE)

        with tempfile.TemporaryDirectory() as tmp:
            extra = save_model_files(Path(tmp), booster, calibrator, grading, spec)
            # The example is the booster's own (numeric, encoded) input, so MLflow's check of
            # the example through the lightgbm flavour runs the real model.
            example = x_hold.head(5)
            info = mlflow.lightgbm.log_model(
                booster, name="model", signature=infer_signature(example, p_hold[:5]),
                input_example=example, extra_files=[str(p) for p in extra],
                # Stated, not inferred: inference re-imports the model in a subprocess (~5 s).
                pip_requirements=pinned_requirements("lightgbm", "numpy", "pandas"),
            )

        def champion_gate() -> tuple[bool, str]:
            # Asked right after the version is registered: the logging stage ends here.
            timings["log_and_register"] = time.perf_counter() - log_started
            return gate(client, spec, holdout, y_hold, metrics["overall"],
                        lambda v: load_model(spec.model_name, version=v, client=client))

        overall, base = metrics["overall"], base_metrics["overall"]
        description = (f"ROC-AUC {overall['roc_auc']:.4f} (baseline {base['roc_auc']:.4f}), "
                       f"PR-AUC {overall['pr_auc']:.4f}, log loss {overall['log_loss']:.4f}, "
                       f"ECE {overall['ece']:.4f} on {len(holdout):,} holdout rows "
                       f"({inputs.cutoff_span(holdout[CUTOFF])})")
        registration = (register_and_gate(client, spec.model_name, info.model_uri, ("roc_auc", overall["roc_auc"]),
                                          champion_gate, description=description) if register else
                        Registration(version="", promoted=False, reason="not registered (backtest fold)"))
        timings["total_in_run"] = time.perf_counter() - started
        mlflow.log_metrics({f"seconds.{k}": v for k, v in timings.items()})

    return TrainResult(
        model=spec.model_name, version=registration.version, run_id=run.info.run_id,
        alias=registration.alias if register else "",
        metrics=metrics, baseline=base_metrics, oracle=oracle_metrics, promoted=registration.promoted,
        reason=registration.reason, seconds=timings,
    )


def _log_artifacts(booster: lgb.Booster, x_hold: pd.DataFrame, y_hold: np.ndarray, scores: dict[str, np.ndarray],
                   metrics: dict, base_metrics: dict, oracle_metrics: dict | None, task: BinaryTask,
                   grading: Grading) -> None:
    import matplotlib.pyplot as plt

    figures = {
        "plots/roc_pr.png": plots.roc_pr(y_hold, scores),
        "plots/calibration.png": plots.calibration(y_hold, scores),
        "plots/lift_gain.png": plots.lift_gain(y_hold, scores),
        "plots/feature_importance.png": plots.importance(booster),
        "plots/shap_summary.png": plots.shap_summary(booster, x_hold.sample(min(len(x_hold), 2000), random_state=0)),
    }
    for path, fig in figures.items():
        mlflow.log_figure(fig, path)
        plt.close(fig)
    mlflow.log_dict({"model": metrics, "baseline": base_metrics, "oracle": oracle_metrics}, "metrics.json")
    mlflow.log_text(model_card(task, metrics, base_metrics, oracle_metrics, grading, booster), "model_card.md")


HEADLINE = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_top10", "capture_top10",
            "lift_top20", "capture_top20")


def model_card(task: BinaryTask, metrics: dict, base: dict, oracle: dict | None, grading: Grading,
               booster: lgb.Booster) -> str:
    """A short markdown evaluation report comparing the model with the baseline and the oracle."""
    spec = task.spec
    cols = ["model", f"baseline: {task.baseline_name}"] + (["oracle (true probability)"] if oracle else [])
    lines = [
        f"# {spec.model_name}: evaluation report",
        "",
        (f"- task: {spec.task}" + (f" ({spec.mode} mode)" if spec.mode else "")
         + f", label window {spec.label_window_days} days"),
        f"- features: feature service `{spec.feature_service}` ({len(spec.features)} features)",
        (f"- holdout: the newest cutoff, {int(metrics['overall']['rows'])} rows, "
         f"positive rate {metrics['overall']['positive_rate']:.3f}") if task.split == "time" else
        (f"- **a cross-sectional model, not a forecast**: the labels have fewer than 3 dates, so the rows "
         f"were split at random by entity (stratified by label, 60/20/20); the holdout is "
         f"{int(metrics['overall']['rows'])} rows of other entities at the same dates, positive rate "
         f"{metrics['overall']['positive_rate']:.3f}"),
        f"- trees: {booster.best_iteration} (early stopping on the validation fold)",
        "",
        "| metric | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for m in HEADLINE:
        row = [metrics["overall"][m], base["overall"][m]] + ([oracle["overall"][m]] if oracle else [])
        lines.append(f"| {m} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    lines += ["", "## By segment (model ROC-AUC / baseline ROC-AUC)", "", "| segment | rows | model | baseline |",
              "|---|---|---|---|"]
    for seg, values in metrics["by_segment"].items():
        b = base["by_segment"].get(seg, {}).get("roc_auc", float("nan"))
        lines.append(f"| {seg} | {int(values['rows'])} | {values['roc_auc']:.4f} | {b:.4f} |")
    rule = ", ".join(f"{label} ≥ {t:.4f}" for label, t in zip(grading.labels, grading.thresholds, strict=False))
    shares = ", ".join(f"{label} {s:.0%}" for label, s in zip(grading.labels, grading.shares, strict=True))
    lines += ["", "## Grades", "",
              (f"Thresholds on the calibrated probability, from validation-fold quantiles ({shares}): "
               f"{rule}; below the last threshold: {grading.labels[-1]}."), ""]
    return "\n".join(lines)


def result_json(result: TrainResult) -> str:
    return json.dumps(result.model_dump(exclude={"seconds"}), indent=2, default=float)
