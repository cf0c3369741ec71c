"""crm-customer-value end to end on a tiny generated world, into a temporary MLflow store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmdata.workspace import Workspace
from features.labels import value_labels
from training.registry import CHALLENGER, CHAMPION, configure_mlflow
from training.tasks import VALUE, get_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from crmdata.synth import WorldConfig, generate_world

    ws = Workspace(tmp_path_factory.mktemp("value_world"))
    generate_world(WorldConfig(customers=1500, leads=0, products=40, seed=11), ws.lake)
    return ws


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "mlflow" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db.parent


def test_train_clv_registers_a_champion_beside_rule_peer_and_oracle(workspace: Workspace, mlflow_store: Path) -> None:
    from pipelines.train import train_task
    from training.frames import labelled_frame
    from training.value.scorer import load_value_model

    client = configure_mlflow()
    assert get_task("clv") is VALUE and get_task("crm-customer-value") is VALUE

    first = train_task(workspace, VALUE, window_days=365)
    assert first.promoted and first.alias == CHAMPION, first.reason
    assert first.reason.startswith("no champion yet")
    model, rule, oracle = first.metrics["overall"], first.baseline["overall"], first.oracle["overall"]
    peer = first.metrics["peer"]
    for metrics in (model, rule, oracle, peer):
        assert {"normalized_gini", "spearman", "decile_mape", "total_error", "top20_capture"} <= set(metrics)
        assert metrics["rows"] == model["rows"]  # the same holdout customers
    # The model ranks better than last year's spend, and the truth better than the model.
    assert rule["normalized_gini"] < model["normalized_gini"] < oracle["normalized_gini"]
    assert 0.6 <= model["coverage"] <= 0.95
    assert first.metrics["kind"] in ("tweedie", "two_part")
    tags = client.get_model_version(VALUE.model_name, first.version).tags
    assert tags["headline_metric"] == "normalized_gini"
    assert tags["headline_value"] == f"{model['normalized_gini']:.4f}"

    # The registered champion scores a feature frame: amounts, intervals, margins, tiers and exact reasons.
    champion = load_value_model()
    assert champion.version == first.version and champion.settings.horizon_days == 365
    cutoff = pd.Timestamp(client.get_run(first.run_id).data.params["holdout_cutoff"]).to_pydatetime()
    frame = labelled_frame(workspace, VALUE.feature_service, value_labels(workspace.lake, [cutoff], window_days=365))
    predicted = champion.predict(frame)
    assert list(predicted.columns) == ["clv", "clv_low", "clv_high", "expected_margin", "tier"]
    assert (predicted["clv"] >= 0).all() and (predicted["clv_low"] <= predicted["clv_high"]).all()
    assert set(predicted["tier"]) <= {"A", "B", "C", "D"}
    assert (predicted.loc[predicted["tier"] == "D", "expected_margin"] < 0).all()
    assert (predicted.loc[predicted["tier"] != "D", "expected_margin"] >= 0).all()
    x = champion.encoder.frame(frame.head(20))
    contributions = champion.contributions(x)
    log_clv = np.log(predicted["clv"].head(20).to_numpy())
    bias = log_clv - contributions.sum(axis=1)
    assert np.allclose(bias, bias[0])  # what the features leave is the same constant for every row
    reasons = champion.reasons(frame.head(3))
    assert len(reasons) == 3 and all(set(r) == {"up", "down"} for r in reasons)

    # The same data again: no better on the same holdout, so it stays the challenger.
    second = train_task(workspace, VALUE, window_days=365)
    assert not second.promoted and second.alias == CHALLENGER
    assert second.reason.startswith("does not beat the champion"), second.reason
    assert str(client.get_model_version_by_alias(VALUE.model_name, CHAMPION).version) == first.version
