"""Drift report of a scoring run: today's features and scores against the champion's.

PSI (population stability index) per feature and for the score, logged to MLflow
(experiment ``crmscore-batch-scoring``) with a warning for every PSI above 0.2,
the usual "significant shift" line (0.1–0.2: moderate, below 0.1: stable).

**The reference** is the champion's training holdout: the newest rows the model
was evaluated (and its grade thresholds calibrated) on, which makes "the base
today looks different from what the model was validated on" the question PSI
answers. The trainer logs its histograms with the model
(``training.drift_reference``, the run's ``drift_reference.json``), so the
report needs no feature snapshot of the holdout cutoff; a model trained before
the artifact existed gets a note and no report, and scoring goes on.

Binning is the reference's (numeric deciles, categorical values, missing values a
bin of their own; see ``training.drift_reference``). Shares are floored at 1e-4 so an empty bin does not make PSI infinite.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
from mlflow.entities import Metric, Param, RunTag
from pydantic import BaseModel, Field

from training.drift_reference import (
    MISSING,
    DriftReference,
    category_shares,
    numeric_shares,
)
from training.registry import configure_mlflow, ensure_experiment

log = logging.getLogger(__name__)

PSI_WARN = 0.2
SHARE_FLOOR = 1e-4
EXPERIMENT = "crmscore-batch-scoring"


def psi_from_shares(reference: np.ndarray, current: np.ndarray) -> float:
    """Σ (cur − ref) · ln(cur / ref) over bins, with shares floored at ``SHARE_FLOOR``."""
    p = np.maximum(np.asarray(reference, dtype=float), SHARE_FLOOR)
    q = np.maximum(np.asarray(current, dtype=float), SHARE_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_categorical(reference: dict[str, float], current: dict[str, float]) -> float:
    """PSI over the union of categories (shares per category, ``category_shares``)."""
    cats = sorted(set(reference) | set(current))
    return psi_from_shares(np.array([reference.get(c, 0.0) for c in cats]),
                           np.array([current.get(c, 0.0) for c in cats]))


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


def compare(reference: DriftReference, current: pl.DataFrame, current_scores: np.ndarray | None,
            ) -> tuple[list[FeaturePSI], float | None]:
    """PSI of each feature of the reference against ``current`` (a polars frame), and of the score."""
    out = []
    for name, ref in reference.features.items():
        values = current.get_column(name)
        if ref.kind == "categorical":
            cur_shares = category_shares(values.cast(pl.String).to_list())
            value = psi_categorical(ref.categories, cur_shares)
            current_missing = cur_shares.get(MISSING, 0.0)
        else:
            shares = numeric_shares(values.cast(float).fill_null(np.nan).to_numpy(), np.asarray(ref.edges))
            value, current_missing = psi_from_shares(np.asarray(ref.shares), shares), float(shares[-1])
        out.append(FeaturePSI(feature=name, kind=ref.kind, psi=value, reference_missing=ref.missing,
                              current_missing=current_missing))
    score = None
    if current_scores is not None:
        score = psi_from_shares(np.asarray(reference.score.shares),
                                numeric_shares(current_scores, np.asarray(reference.score.edges)))
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
