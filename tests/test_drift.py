"""PSI against hand-computed values, the warning rule, and the reference the trainer logs
with the model (on the trained tiny world)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from math import log

import numpy as np
import pandas as pd
import polars as pl
import pytest

from crmdata.workspace import Workspace
from pipelines.drift import (
    SHARE_FLOOR,
    DriftReport,
    FeaturePSI,
    compare,
    finish,
    psi_from_shares,
)
from training.drift_reference import DriftReference, numeric_bins


def _psi(reference: list, current: list, categorical: bool = False) -> float:
    """PSI of one feature through the real path: histograms of a training holdout (pandas),
    compared with a scoring run's features (polars)."""
    kind = {"x"} if categorical else set()
    ref = DriftReference.of_holdout(pd.DataFrame({"x": reference}), ["x"], kind, np.zeros(len(reference)),
                                    "2025-01-01")
    features, _ = compare(ref, pl.DataFrame({"x": current}, strict=False), None)
    return features[0].psi


def test_psi_of_shares_by_hand() -> None:
    # (0.25 - 0.5) ln(0.5) + (0.75 - 0.5) ln(1.5) = 0.25 ln 3
    assert psi_from_shares(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.25 * log(3), abs=1e-15)
    assert psi_from_shares(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == 0.0
    # An empty bin is floored, not infinite.
    assert np.isfinite(psi_from_shares(np.array([1.0, 0.0]), np.array([0.0, 1.0])))


def test_numeric_psi_uses_reference_deciles() -> None:
    reference = np.arange(1, 11, dtype=float)  # one value per decile bin
    assert numeric_bins(reference).tolist() == pytest.approx([1.9, 2.8, 3.7, 4.6, 5.5, 6.4, 7.3, 8.2, 9.1])
    assert _psi(reference.tolist(), reference.tolist()) == 0.0
    current = [1.0] * 5 + [10.0] * 5  # all mass in the two outer bins
    expected = 2 * 0.4 * log(5) + 8 * (SHARE_FLOOR - 0.1) * log(SHARE_FLOOR / 0.1)
    assert _psi(reference.tolist(), current) == pytest.approx(expected, rel=1e-12)


def test_missing_values_are_a_bin_of_their_own() -> None:
    # Two of four values go missing: shares (.25, .25, .25, .25, 0) -> (.25, .25, 0, 0, .5).
    expected = 2 * (SHARE_FLOOR - 0.25) * log(SHARE_FLOOR / 0.25) + (0.5 - SHARE_FLOOR) * log(0.5 / SHARE_FLOOR)
    assert _psi([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, None, None]) == pytest.approx(expected, rel=1e-12)
    # A feature that is mostly one value gets fewer, distinct edges, not empty duplicates.
    assert numeric_bins(np.array([0.0] * 95 + [1.0] * 5)).tolist() == [0.0]


def test_categorical_psi_by_hand() -> None:
    assert _psi(["a", "a", "b", "b"], ["a", "a", "a", "b"], categorical=True) == pytest.approx(0.25 * log(3),
                                                                                            abs=1e-15)
    assert _psi(["a", None], ["a", None], categorical=True) == 0.0
    # going missing is drift: (0.5 - floor) ln(0.5 / floor) + (0.5 - 1) ln(0.5)
    expected = (0.5 - SHARE_FLOOR) * log(0.5 / SHARE_FLOOR) - 0.5 * log(0.5)
    assert _psi(["a", "a"], ["a", None], categorical=True) == pytest.approx(expected, rel=1e-12)


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
def test_the_reference_is_logged_with_the_model_and_matches_its_holdout(ws: Workspace) -> None:
    """The trainer's histograms (pandas) and a scoring run's (polars) agree exactly: the holdout
    rebuilt from the feature tables drifts by 0 from the reference logged with the model."""
    from mlflow import MlflowClient

    from features.store import feature_store
    from pipelines.scoring.inputs import population, read_features_as_of, resolve_service
    from pipelines.scoring.predict import BinaryPredictor
    from training.drift_reference import load_reference
    from training.model import load_model

    for name, task in (("crm-churn", "churn"), ("crm-lead-scoring", "lead")):
        model = load_model(name)
        params = MlflowClient().get_run(model.run_id).data.params
        reference = load_reference(model.run_id or "")  # from the run alone: no workspace, no snapshot
        assert f"{reference.holdout_cutoff:%Y-%m-%d}" == params["holdout_cutoff"][:10]
        assert reference.rows == int(params["holdout_rows"])
        assert list(reference.features) == model.spec.features
        plan = resolve_service(feature_store(ws), model.spec.feature_service)
        holdout = read_features_as_of(plan, population(ws.lake, task, reference.holdout_cutoff, model.spec.mode),
                                      reference.holdout_cutoff)
        assert holdout.height == reference.rows
        predictor = BinaryPredictor.from_model(model, task, "grade", reference.holdout_cutoff, "none")
        scores = predictor.probabilities(holdout.to_arrow(compat_level=pl.CompatLevel.oldest()))
        features, score_psi = compare(reference, holdout, scores)
        assert max(f.psi for f in features) == pytest.approx(0.0, abs=1e-12)
        assert score_psi == pytest.approx(0.0, abs=1e-12)


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
