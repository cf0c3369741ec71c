"""PSI against hand-computed values, the warning rule, and the reference rebuilt from
the champion's holdout cutoff (on the trained tiny world)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from math import log

import numpy as np
import pytest

from crmdata.workspace import Workspace
from pipelines.drift import (
    SHARE_FLOOR,
    DriftReport,
    FeaturePSI,
    finish,
    numeric_bins,
    psi_categorical,
    psi_from_shares,
    psi_numeric,
)


def test_psi_of_shares_by_hand() -> None:
    # (0.25 - 0.5) ln(0.5) + (0.75 - 0.5) ln(1.5) = 0.25 ln 3
    assert psi_from_shares(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.25 * log(3), abs=1e-15)
    assert psi_from_shares(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0.0
    # An empty bin is floored, not infinite.
    assert np.isfinite(psi_from_shares(np.array([1.0, 0.0]), np.array([0.0, 1.0])))


def test_numeric_psi_uses_reference_deciles() -> None:
    reference = np.arange(1, 11, dtype=float)  # one value per decile bin
    assert numeric_bins(reference).tolist() == pytest.approx([1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2, 9.1])
    assert psi_numeric(reference, reference.copy()) == 0.0
    current = np.array([1.0] * 5 + [10.0] * 5)  # all mass in the two outer bins
    expected = 2 * 0.4 * log(5) + 8 * (SHARE_FLOOR - 0.1) * log(SHARE_FLOOR / 0.1)
    assert psi_numeric(reference, current) == pytest.approx(expected, rel=1e-12)


def test_missing_values_are_a_bin_of_their_own() -> None:
    reference = np.array([1.0, 2.0, 3.0, 4.0])
    assert psi_numeric(reference, np.array([1.0, 2.0, np.nan, np.nan])) > 0.2
    # A feature that is mostly one value gets fewer, distinct edges, not empty duplicates.
    assert numeric_bins(np.array([0.0] * 95 + [1.0] * 5)).tolist() == [0.0]


def test_categorical_psi_by_hand() -> None:
    assert psi_categorical(["a", "a", "b", "b"], ["a", "a", "a", "b"]) == pytest.approx(0.25 * log(3), abs=1e-15)
    assert psi_categorical(["a", None], ["a", None]) == 0.0
    assert psi_categorical(["a", "a"], ["a", None]) > 0.2  # going missing is drift


def test_psi_above_the_threshold_warns(caplog: pytest.LogCaptureFixture) -> None:
    report = DriftReport(task="churn", model_name="crm-churn", model_version="3",
                         as_of=datetime(2025, 12, 29, tzinfo=UTC), reference="test",
                         reference_cutoff=datetime(2025, 9, 27, tzinfo=UTC), score_psi=0.05,
                         features=[FeaturePSI(feature="tenure_days", kind="numeric", psi=0.35,
                                              reference_missing=0, current_missing=0),
                                   FeaturePSI(feature="segment", kind="categorical", psi=0.01,
                                              reference_missing=0, current_missing=0)])
    with caplog.at_level(logging.WARNING, logger="pipelines.drift"):
        finish(report)
    assert report.drifted == ["tenure_days"]
    assert "PSI > 0.2" in caplog.text and "tenure_days 0.35" in caplog.text and "segment" not in caplog.text
    assert report.summary()["top_features"] == {"tenure_days": 0.35, "segment": 0.01}


# --- on the trained world --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    from tests.test_score_world import workspace_copy

    with workspace_copy(tmp_path_factory, "drift") as workspace:
        yield workspace


@pytest.mark.slow
def test_the_reference_is_the_champions_holdout(ws: Workspace) -> None:
    from mlflow import MlflowClient

    from features.store import feature_store
    from pipelines.scoring.inputs import resolve_service
    from pipelines.scoring.job import _reference
    from training.model import load_model

    for name, task in (("crm-churn", "churn"), ("crm-lead-scoring", "lead")):
        model = load_model(name)
        params = MlflowClient().get_run(model.run_id).data.params
        plan = resolve_service(feature_store(ws), model.spec.feature_service)
        frame, cutoff, note = _reference(ws, task, model, plan)
        assert f"{cutoff:%Y-%m-%d}" == params["holdout_cutoff"][:10]
        # The rebuilt rows are the holdout the trainer evaluated (same count, all with features).
        assert frame.height == int(params["holdout_rows"]) and note is None
        assert frame["feature_timestamp"].null_count() == 0


@pytest.mark.slow
def test_a_scoring_run_logs_its_drift_report_to_mlflow(ws: Workspace) -> None:
    from mlflow import MlflowClient

    from pipelines.drift import EXPERIMENT
    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions

    run = score(ws, "churn", options=ScoreOptions(reasons="none"))
    assert run.drift is not None and run.drift["mlflow_run_id"]
    client = MlflowClient()
    logged = client.get_run(run.drift["mlflow_run_id"])
    assert client.get_experiment(logged.info.experiment_id).name == EXPERIMENT
    metrics = logged.data.metrics
    assert {"psi_score", "psi_max_feature", "drifted_count", "rows"} <= set(metrics)
    assert metrics["rows"] == run.rows
    assert logged.data.params["model_version"] == run.model_version
    assert logged.data.tags["drifted"] == (",".join(run.drift["drifted"]) or "none")
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"drift.json", "manifest.json"} <= artifacts
