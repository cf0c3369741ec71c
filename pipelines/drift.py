"""Drift report of a scoring run: today's features and scores against the champion's.

PSI (population stability index) per feature and for the score, logged to MLflow
(experiment ``crmscore-batch-scoring``) with a warning for every PSI above 0.2,
the usual "significant shift" line (0.1–0.2: moderate, below 0.1: stable).

**The reference.** The trainer stores neither its rows nor a histogram, and this
job may not change the trainer. What it does store is enough to rebuild the rows
the champion was judged on: the run's ``holdout_cutoff`` param. The holdout is
the population at risk at that cutoff (the task's population rule in
``training.tasks``, which scoring uses too) with the features Feast joined as
of it, i.e. the newest snapshot within the TTL. So the reference is that population read through the
same service as of ``holdout_cutoff``, scored by the champion itself. It is the
newest data the model was evaluated (and its grade thresholds calibrated) on,
which makes "the base today looks different from what the model was validated
on" the question PSI answers. The run's ``holdout_rows`` is compared with the
rebuilt row count; a mismatch (features rebuilt since, lake changed) is reported
in the note rather than silently accepted. If the holdout snapshot is no longer
in the feature tables the report says so and scoring goes on without drift.

Binning: numeric features use the reference's deciles (distinct edges only, so
a feature that is mostly 0 gets fewer bins), categoricals their values; missing
values are a bin of their own in both, so a feature going missing is drift too.
Shares are floored at 1e-4 so an empty bin does not make PSI infinite.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from mlflow.entities import Metric, Param, RunTag
from pydantic import BaseModel, Field

from training.registry import configure_mlflow, ensure_experiment

log = logging.getLogger(__name__)

PSI_WARN = 0.2
BINS = 10
SHARE_FLOOR = 1e-4
EXPERIMENT = "crmscore-batch-scoring"


def psi_from_shares(reference: np.ndarray, current: np.ndarray) -> float:
    """Σ (cur − ref) · ln(cur / ref) over bins, with shares floored at ``SHARE_FLOOR``."""
    p = np.maximum(np.asarray(reference, dtype=float), SHARE_FLOOR)
    q = np.maximum(np.asarray(current, dtype=float), SHARE_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def numeric_bins(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior bin edges: the distinct deciles of the reference's non-missing values."""
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def _numeric_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    missing = ~np.isfinite(x)
    index = np.where(missing, len(edges) + 1, np.searchsorted(edges, np.where(missing, 0, x), side="right"))
    counts = np.bincount(index, minlength=len(edges) + 2)
    return counts / max(len(x), 1)


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = BINS) -> float:
    edges = numeric_bins(reference, bins)
    return psi_from_shares(_numeric_shares(reference, edges), _numeric_shares(current, edges))


def psi_categorical(reference: Sequence[Any], current: Sequence[Any]) -> float:
    """PSI over the union of categories; None (and NaN) is a category of its own."""
    def shares(values: Sequence[Any]) -> dict[str, float]:
        series = values if isinstance(values, pl.Series) else pl.Series(list(values), dtype=pl.Object)
        if series.dtype == pl.Object:
            series = pl.Series([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                                for v in series], dtype=pl.String)
        series = series.cast(pl.String).fill_null("\0missing")
        counts = series.value_counts()
        total = max(len(series), 1)
        return dict(zip(counts[series.name].to_list(), (counts["count"] / total).to_list(), strict=True))

    ref, cur = shares(reference), shares(current)
    cats = sorted(set(ref) | set(cur))
    return psi_from_shares(np.array([ref.get(c, 0.0) for c in cats]), np.array([cur.get(c, 0.0) for c in cats]))


class FeaturePSI(BaseModel):
    feature: str
    kind: str  # numeric | categorical
    psi: float
    reference_missing: float
    current_missing: float


class DriftReport(BaseModel):
    task: str
    model_name: str
    model_version: str
    as_of: datetime
    reference: str = Field(description="what the reference rows are")
    reference_cutoff: datetime | None = None
    reference_rows: int = 0
    current_rows: int = 0
    threshold: float = PSI_WARN
    score_psi: float | None = None
    features: list[FeaturePSI] = Field(default_factory=list)
    drifted: list[str] = Field(default_factory=list, description="features (and 'score') with PSI > threshold")
    note: str | None = None
    mlflow_run_id: str | None = None

    def summary(self) -> dict[str, Any]:
        """The part that goes into the run manifest."""
        top = sorted(self.features, key=lambda f: f.psi, reverse=True)[:5]
        return {
            "reference": self.reference, "reference_cutoff": self.reference_cutoff,
            "reference_rows": self.reference_rows, "score_psi": self.score_psi,
            "max_feature_psi": max((f.psi for f in self.features), default=None),
            "top_features": {f.feature: round(f.psi, 4) for f in top}, "drifted": self.drifted,
            "note": self.note, "mlflow_run_id": self.mlflow_run_id,
        }


def compare(reference: Any, current: Any, features: list[str], categorical: set[str],
            reference_scores: np.ndarray | None, current_scores: np.ndarray | None) -> tuple[list[FeaturePSI], float | None]:
    """PSI of each feature (polars frames) and of the score arrays."""
    out = []
    for name in features:
        ref, cur = reference.get_column(name), current.get_column(name)
        if name in categorical:
            value = psi_categorical(ref, cur)
            kind = "categorical"
        else:
            value = psi_numeric(ref.cast(float).fill_null(np.nan).to_numpy(),
                                cur.cast(float).fill_null(np.nan).to_numpy())
            kind = "numeric"
        out.append(FeaturePSI(feature=name, kind=kind, psi=value,
                              reference_missing=float(ref.null_count() / max(len(ref), 1)),
                              current_missing=float(cur.null_count() / max(len(cur), 1))))
    score = None
    if reference_scores is not None and current_scores is not None:
        score = psi_numeric(reference_scores, current_scores)
    return out, score


def finish(report: DriftReport) -> DriftReport:
    """Fill ``drifted`` and log a warning per drifted feature."""
    drifted = [f.feature for f in report.features if f.psi > report.threshold]
    if report.score_psi is not None and report.score_psi > report.threshold:
        drifted.append("score")
    report.drifted = drifted
    if drifted:
        detail = ", ".join(
            f"{f.feature} {f.psi:.2f}" for f in sorted(report.features, key=lambda f: -f.psi) if f.feature in drifted
        )
        if "score" in drifted:
            detail += f", score {report.score_psi:.2f}"
        log.warning("%s as of %s: PSI > %.1f against the champion's holdout (%s): %s",
                    report.task, f"{report.as_of:%Y-%m-%d}", report.threshold,
                    f"{report.reference_cutoff:%Y-%m-%d}" if report.reference_cutoff else "n/a", detail)
    return report


_METRIC_SAFE = re.compile(r"[^0-9A-Za-z_\-. /]")


def log_to_mlflow(report: DriftReport, manifest: dict[str, Any]) -> str | None:
    """One MLflow run per scoring run: PSI metrics, the report and the run manifest."""
    client = configure_mlflow()
    experiment_id = ensure_experiment(client, EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"{report.task} {report.as_of:%Y-%m-%d}",
                            tags={"task": report.task, "model_name": report.model_name,
                                  "model_version": report.model_version})
    now = int(datetime.now().timestamp() * 1000)
    metrics = {f"psi.{_METRIC_SAFE.sub('_', f.feature)}": f.psi for f in report.features}
    if report.score_psi is not None:
        metrics["psi_score"] = report.score_psi
    if report.features:
        metrics["psi_max_feature"] = max(f.psi for f in report.features)
    metrics["drifted_count"] = float(len(report.drifted))
    for key in ("rows", "seconds", "rows_per_second", "no_features"):
        if isinstance(manifest.get(key), int | float):
            metrics[key] = float(manifest[key])
    params = {"task": report.task, "as_of": f"{report.as_of:%Y-%m-%d}", "engine": str(manifest.get("engine")),
              "model_name": report.model_name, "model_version": report.model_version,
              "reference_cutoff": str(report.reference_cutoff), "reference_rows": str(report.reference_rows)}
    tags = {"drifted": ",".join(report.drifted) or "none", "psi_threshold": str(report.threshold)}
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.log_dict(run.info.run_id, report.model_dump(mode="json"), "drift.json")
    client.log_dict(run.info.run_id, manifest, "manifest.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
