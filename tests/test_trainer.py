"""The shared binary trainer end to end, into a temporary MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from crmdata.errors import CrmscoreError
from training.model import ModelSpec, load_model
from training.registry import CHALLENGER, CHAMPION, list_versions, promote
from training.tasks import CHURN
from training.trainer import CUTOFF, LABEL, BinaryTask, train_binary

FEATURES = ["x1", "x2", "x3", "segment"]
MODEL = CHURN.model_name


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "mlflow" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db.parent


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def make_frame(n: int = 2500, cutoffs: int = 5, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = n * cutoffs
    seg = rng.choice(["smb", "mid_market", "enterprise"], rows)
    x1, x2, x3 = rng.normal(size=rows), rng.normal(size=rows), rng.normal(size=rows)
    logit = -2.2 + 1.2 * x1 - 0.8 * np.maximum(x2, 0) + 0.6 * (seg == "smb") * x1 + 0.4 * (seg == "enterprise")
    p = 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame({
        "customer_id": [f"C{i % n}" for i in range(rows)],
        CUTOFF: pd.to_datetime("2024-01-01", utc=True) + pd.to_timedelta(np.repeat(np.arange(cutoffs) * 91, n), "D"),
        "x1": x1, "x2": x2, "x3": x3, "segment": seg,
        LABEL: (rng.uniform(size=rows) < p).astype(int),
    })
    return frame, p


def task(features: list[str] = FEATURES, **kw: int) -> BinaryTask:
    spec = ModelSpec(task="churn", model_name=MODEL, feature_service="churn_v1", entity_key="customer_id",
                     features=features, categories={"segment": []} if "segment" in features else {},
                     label_window_days=90, mode="subscription")
    return BinaryTask(spec=spec, segment_column="segment", grading=CHURN.grades, baseline_name="x1 rule",
                      positive_noun="churned customers", negative_noun="retained customers", **kw)


def test_trains_logs_registers_and_promotes(mlflow_store: Path) -> None:
    frame, p = make_frame()
    result = train_binary(task(), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)

    assert result.promoted and result.alias == CHAMPION and result.reason == "no champion yet"
    overall = result.metrics["overall"]
    assert overall["roc_auc"] > result.baseline["overall"]["roc_auc"]
    assert overall["roc_auc"] == pytest.approx(result.oracle["overall"]["roc_auc"], abs=0.03)
    assert set(result.metrics["by_segment"]) == {"smb", "mid_market", "enterprise"}
    assert overall["rows"] == 2500  # the holdout is exactly the newest cutoff

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["feature_service"] == "churn_v1"
    assert len(run.data.tags["data_fingerprint"]) == 16 and run.data.tags["git_commit"]
    assert run.data.metrics["roc_auc"] == pytest.approx(overall["roc_auc"])
    assert "baseline.roc_auc" in run.data.metrics and "oracle.roc_auc" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"model_card.md", "metrics.json", "plots/roc_pr.png", "plots/calibration.png", "plots/lift_gain.png",
            "plots/feature_importance.png", "plots/shap_summary.png"} <= artifacts
    card = mlflow.artifacts.load_text(f"runs:/{result.run_id}/model_card.md")
    assert "baseline: x1 rule" in card and "oracle" in card

    mv = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert str(mv.version) == result.version == "1"
    assert set(mv.aliases) == {CHAMPION, CHALLENGER}
    assert mv.tags["gate_reason"] == "no champion yet" and mv.tags["promoted_by"] == "gate"
    assert mv.tags["headline_metric"] == "roc_auc" and mv.tags["headline_value"] == f"{overall['roc_auc']:.4f}"
    assert run.data.tags["promoted"] == "true" and run.data.tags["promotion_reason"] == "no champion yet"

    model = load_model(MODEL)
    holdout = frame[frame[CUTOFF] == frame[CUTOFF].max()]
    scored = model.score(holdout)
    assert scored["probability"].between(0, 1).all() and scored["score"].between(1, 99).all()
    assert set(scored["grade"]) == {"low", "medium", "high"}
    reasons = model.reasons(holdout.head(3))
    assert all(r.impact > 0 for r in reasons[0]["up"]) and all(r.impact < 0 for r in reasons[0]["down"])
    # The booster is stored in LightGBM's native text format, not a pickle.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/{result.version}"))
    assert (local / "model.lgb").read_text().startswith("tree")


def test_gate_keeps_a_worse_challenger_and_promotes_a_better_one(mlflow_store: Path) -> None:
    frame, p = make_frame()
    first = train_binary(task(), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)
    assert first.promoted

    # Without its strongest feature the challenger is worse on the same holdout.
    worse = train_binary(task(features=["x2", "x3", "segment"]), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)
    assert not worse.promoted and worse.alias == CHALLENGER
    assert worse.reason.startswith("does not beat the champion")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == first.version
    assert client.get_model_version(MODEL, worse.version).tags["gate_decision"] == "kept"

    # Make the weak model champion by hand; the full model then beats it.
    promote(client, MODEL, worse.version, "test: demote to compare")
    better = train_binary(task(), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)
    assert better.promoted and better.reason.startswith("beats the champion")
    rows = list_versions(client, (MODEL,))
    assert [r.version for r in rows] == ["3", "2", "1"]
    assert CHAMPION in rows[0].aliases


def test_minimum_data_errors_say_what_is_missing(mlflow_store: Path) -> None:
    frame, p = make_frame(n=400)
    with pytest.raises(CrmscoreError, match=r"need ≥ 200 churned customers in the training cutoffs, found \d+"):
        train_binary(task(min_positives=200), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)
    few_cutoffs = frame[frame[CUTOFF] < frame[CUTOFF].unique()[2]]
    with pytest.raises(CrmscoreError, match="need ≥ 4 cutoffs with labels .*found 2"):
        train_binary(task(), few_cutoffs, baseline=sigmoid(few_cutoffs["x1"].to_numpy()), oracle=None)
    with pytest.raises(CrmscoreError, match=r"need ≥ 5000 retained customers in the training cutoffs, found \d+"):
        train_binary(task(min_positives=1, min_negatives=5000), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)


def test_cli_models_list_and_promote(mlflow_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.cli.common import console

    frame, p = make_frame(n=1500)
    first = train_binary(task(), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)
    second = train_binary(task(features=["x2", "x3", "segment"]), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert '"version": "2"' in listed.output and '"champion"' in listed.output
    # The table fits an 80-column terminal without breaking a name or a number; --wide adds
    # the gate's reason, whole, on its row.
    monkeypatch.setattr(console, "width", 80)
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert max(len(line) for line in lines) <= 80, listed.output
    for result in (first, second):
        row = next(line for line in lines if line.lstrip().startswith(f"{MODEL} ") and f" {result.version} " in line)
        assert f"roc_auc {result.metrics['overall']['roc_auc']:.4f}" in row, listed.output
    wide = runner.invoke(app, ["models", "list", "--wide"])
    assert wide.exit_code == 0, wide.output
    assert any(second.reason in line for line in wide.output.splitlines()), wide.output
    promoted = runner.invoke(app, ["promote", MODEL, second.version, "--reason", "test"])
    assert promoted.exit_code == 0, promoted.output
    assert str(MlflowClient().get_model_version_by_alias(MODEL, CHAMPION).version) == second.version
    missing = runner.invoke(app, ["promote", MODEL, "99"])
    assert missing.exit_code == 1 and f"{MODEL} has no version 99" in missing.output
    assert first.version == "1"


def test_gate_refuses_to_compare_another_target(mlflow_store: Path) -> None:
    frame, p = make_frame(n=1500)
    assert train_binary(task(), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p).promoted
    other = task()
    other = BinaryTask(**{**other.__dict__, "spec": other.spec.model_copy(update={"mode": "transactional"})})
    result = train_binary(other, frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p)
    assert not result.promoted and "predicts another target (subscription mode, 90 days)" in result.reason


def test_mlflow_ui_sees_a_training_experiment_its_inputs_and_a_described_version(
    mlflow_store: Path, tmp_path: Path
) -> None:
    from training.registry import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, configure_mlflow
    from training.trainer import fingerprint

    client = configure_mlflow()
    # An experiment from before the kind was set: training gives it the kind too.
    client.create_experiment(MODEL)
    frame, p = make_frame(n=1500)
    features = tmp_path / "features"
    result = train_binary(task(), frame, baseline=sigmoid(frame["x1"].to_numpy()), oracle=p, source=features)

    experiment = client.get_experiment_by_name(MODEL)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i
              for i in client.get_run(result.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "holdout"}
    stamps = sorted(frame[CUTOFF].unique())
    folds = {"training": frame[frame[CUTOFF].isin(stamps[:3])], "validation": frame[frame[CUTOFF] == stamps[3]],
             "holdout": frame[frame[CUTOFF] == stamps[4]]}
    for context, fold in folds.items():
        dataset, tags = inputs[context].dataset, {t.key: t.value for t in inputs[context].tags}
        assert dataset.name == "churn_v1" and dataset.source_type == "local"
        assert str(features) in dataset.source
        assert dataset.digest == fingerprint(fold)  # a hash of every row, not a sample
        assert '"num_rows": ' + str(len(fold)) in dataset.profile and tags["rows"] == str(len(fold))
    assert {t.key: t.value for t in inputs["training"].tags}["cutoffs"] == "2024-01-01 … 2024-07-01 (3)"
    assert {t.key: t.value for t in inputs["holdout"].tags}["cutoffs"] == "2024-12-30"

    version = client.get_model_version(MODEL, result.version)
    overall = result.metrics["overall"]
    assert version.description.startswith(f"ROC-AUC {overall['roc_auc']:.4f} (baseline ")
    assert "on 1,500 holdout rows (2024-12-30)" in version.description
    assert version.description.endswith("; promoted to champion") and "\n" not in version.description
