"""Finishing a scoring run, shared by the engines' jobs (binary models and customer value):
the feature times used, the build stamp of the inputs, the drift report and its MLflow run."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

import numpy as np
import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from features.build import read_build_summary
from pipelines import drift as drift_mod
from pipelines.scoring.table import RunManifest
from pipelines.scoring.types import FEATURE_TIMESTAMP
from training.drift_reference import load_reference

log = logging.getLogger(__name__)


class Scored(Protocol):
    """What the finishing steps read of a run: the feature frame (or a sample) and the scores."""

    features: pl.DataFrame | None
    probabilities: np.ndarray


class Versioned(Protocol):
    """A loaded model, as the drift report names it."""

    name: str
    version: str
    run_id: str | None


def feature_timestamps(result: Scored) -> list[datetime]:
    if result.features is None:
        return []
    stamps = result.features.get_column(FEATURE_TIMESTAMP).drop_nulls().unique().sort()
    return [as_utc(t) for t in stamps.to_list()]


def build_stamp(ws: Workspace) -> dict[str, str]:
    try:
        built = read_build_summary(ws.feature_tables).built_at
    except CrmscoreError:
        return {}
    return {"features built_at": built.isoformat()}


def drift_report(task: str, model: Versioned, as_of: datetime, result: Scored) -> drift_mod.DriftReport:
    """The drift report of this run against the reference logged with the champion (a missing
    reference is a note, not a failure)."""
    report = drift_mod.DriftReport(task=task, model_name=model.name, model_version=model.version, as_of=as_of,
                                   reference="the champion's training holdout (drift_reference.json of its run)")
    try:
        if not model.run_id:
            raise CrmscoreError(f"{model.name} v{model.version} has no training run")
        reference = load_reference(model.run_id)
    except CrmscoreError as exc:
        report.note = f"no reference: {exc}"
        log.warning("%s drift: %s", task, report.note)
        return report
    report.reference_cutoff, report.reference_rows = reference.holdout_cutoff, reference.rows
    current = result.features
    if current is None:
        report.note = "no rows to compare"
        return report
    current = current.filter(pl.col(FEATURE_TIMESTAMP).is_not_null())
    report.current_rows = current.height
    report.features, report.score_psi = drift_mod.compare(
        reference, current, result.probabilities[np.isfinite(result.probabilities)])
    drift_mod.finish(report)
    return report


def log_drift(report: drift_mod.DriftReport, manifest: RunManifest) -> None:
    try:
        report.mlflow_run_id = drift_mod.log_to_mlflow(report, manifest.model_dump(mode="json"))
    except Exception as exc:  # noqa: BLE001 - the scores are good; a tracking hiccup must not lose them
        log.warning("%s drift: could not log to MLflow (%s: %s)", report.task, type(exc).__name__, exc)

