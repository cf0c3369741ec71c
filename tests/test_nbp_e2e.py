"""crm-next-best-product end to end on a small generated world, into a temporary MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from training.nbp import MODEL_NAME, NbpParams, load_recommender, train_nbp
from training.registry import CHALLENGER, CHAMPION, configure_mlflow
from training.trainer import result_json

#: A deliberately poor model: two factors, one sweep, everyone on the factors.
WEAK = NbpParams(factors=2, iterations=1, regularization=500.0, min_orders=1, popularity_weight=0.0, num_threads=1)
GOOD = NbpParams(num_threads=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crmdata.synth import WorldConfig, generate_world

    lake = tmp_path_factory.mktemp("nbp_world") / "lake"
    generate_world(WorldConfig(customers=1500, leads=0, products=40, seed=11), lake)
    return lake


@pytest.fixture()
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "mlflow" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    return db.parent


def test_train_log_register_gate_both_ways_and_serve(world: Path, mlflow_store: Path) -> None:
    client = configure_mlflow()  # also points MLflow at this test's store (a global)

    # 1. No champion yet: the first version is promoted whatever it is worth.
    first = train_nbp(world, params=WEAK)
    assert first.promoted and first.alias == CHAMPION and first.reason == "no champion yet"
    assert set(json.loads(result_json(first))) == {"model", "version", "run_id", "alias", "metrics", "baseline",
                                                   "oracle", "promoted", "reason"}

    # 2. A better challenger beats it on the same test customers and is promoted.
    good = train_nbp(world, params=GOOD)
    assert good.promoted and good.reason.startswith("beats the champion"), good.reason
    overall = good.metrics["overall"]
    assert overall["ndcg_at_10"] > first.metrics["overall"]["ndcg_at_10"]

    # 3. A worse one is registered as challenger but the champion stays.
    third = train_nbp(world, params=WEAK)
    assert not third.promoted and third.alias == CHALLENGER
    assert third.reason.startswith("does not beat the champion"), third.reason
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == good.version
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == third.version
    tags = client.get_model_version(MODEL_NAME, third.version).tags
    assert tags["gate_decision"] == "kept" and tags["headline_metric"] == "ndcg_at_10"
    assert tags["headline_value"] == f"{third.metrics['overall']['ndcg_at_10']:.4f}" and tags["cutoff"]
    # What MLflow's UI shows: the version's one line, and the run's inputs (orders before the cutoff).
    description = client.get_model_version(MODEL_NAME, third.version).description
    assert description.startswith(f"NDCG@10 {third.metrics['overall']['ndcg_at_10']:.4f} (popularity ")
    assert description.endswith("; kept as challenger") and "\n" not in description
    inputs = {i.dataset.name: (i.dataset, {t.key: t.value for t in i.tags})
              for i in client.get_run(third.run_id).inputs.dataset_inputs}
    dataset, input_tags = inputs["customer × product interactions"]
    assert dataset.source_type == "local" and "orders.parquet" in dataset.source
    assert input_tags["mlflow.data.context"] == "training" and int(input_tags["rows"]) > 0
    assert input_tags["cutoffs"] == f"orders before {tags['cutoff'][:10]}"
    assert inputs["purchases in the test window"][1]["mlflow.data.context"] == "holdout"
    assert client.get_run(third.run_id).data.tags["promoted"] == "false"

    # Metrics: every k and every policy, on the same rows; the model beats popularity here.
    for k in (5, 10):
        for m in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage"):
            assert 0.0 <= overall[f"{m}_at_{k}"] <= 1.0
    assert good.baseline["overall"]["users"] == overall["users"] == good.oracle["overall"]["users"]
    assert good.baseline["segment_popularity"]["overall"]["users"] == overall["users"]
    assert overall["ndcg_at_10"] > good.baseline["overall"]["ndcg_at_10"]
    assert good.oracle["overall"]["ndcg_at_10"] > overall["ndcg_at_10"]

    # The run: metrics, the metric table, the plot against k, the model card.
    run = client.get_run(good.run_id)
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(overall["ndcg_at_10"])
    assert {"baseline.ndcg_at_10", "segment_baseline.ndcg_at_10", "oracle.ndcg_at_10"} <= set(run.data.metrics)
    assert run.data.tags["git_commit"] and len(run.data.tags["data_fingerprint"]) == 16
    paths = {a.path for a in client.list_artifacts(good.run_id)} | {
        a.path for a in client.list_artifacts(good.run_id, "plots")}
    assert {"metrics_table.json", "metrics_table.csv", "metrics.json", "model_card.md",
            "plots/metrics_by_k.png"} <= paths
    table = pd.read_csv(mlflow.artifacts.download_artifacts(f"runs:/{good.run_id}/metrics_table.csv"))
    assert set(table["policy"]) == {"model", "popularity", "segment popularity", "oracle"}

    # The registered model: .npy/.json artifacts only, nothing pickled, a signature.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{good.version}"))
    artifacts = [p for p in (local / "artifacts").rglob("*") if p.is_file()]
    assert artifacts and {p.suffix for p in artifacts} == {".npy", ".json"}
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle", ".joblib")]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    assert pyfunc.metadata.signature is not None
    assert pyfunc.metadata.signature.params.to_dict()[0]["name"] == "k"

    # The pyfunc predicts; a customer the model never saw gets the cold-start fallback.
    rec = load_recommender(alias=CHAMPION)
    assert rec.version == good.version and rec.alias == CHAMPION and rec.name == MODEL_NAME
    known = rec.customer_ids[:2].tolist()
    frame = pyfunc.predict(pd.DataFrame({"customer_id": [*known, "NEW-1"], "segment": [None, None, "smb"]}),
                           params={"k": 3})
    assert list(frame.columns) == ["customer_id", "rank", "product_id", "score", "reason", "reason_product_id",
                                   "cold_start"]
    assert frame.groupby("customer_id").size().to_dict() == {known[0]: 3, known[1]: 3, "NEW-1": 3}
    new = frame[frame["customer_id"] == "NEW-1"]
    assert new["cold_start"].all() and (new["reason"] == "popular in your segment").all()
    top = frame[frame["customer_id"] == known[0]]["product_id"].iloc[0]
    excluded = pyfunc.predict(pd.DataFrame({"customer_id": [known[0]], "exclude": [[top]]}), params={"k": 3})
    assert top not in excluded["product_id"].tolist() and len(excluded) == 3

    # Batch scoring: every customer at once, the same answers as per-customer calls.
    batch = rec.recommend_all(k=5)
    assert batch["customer_id"].n_unique() == rec.n_customers
    one = rec.recommend([known[0]], k=5)[0]
    assert batch.filter(batch["customer_id"] == known[0])["product_id"].to_list() == [
        i.product_id for i in one.items]


@pytest.mark.slow
def test_bpr_trains_and_registers(world: Path, mlflow_store: Path) -> None:
    result = train_nbp(world, algorithm="bpr", params=NbpParams(factors=16, bpr_iterations=50, num_threads=1))
    assert result.version == "1" and result.promoted
    rec = load_recommender(alias=CHAMPION)
    assert rec.spec.algorithm == "bpr" and rec.item_factors.shape[1] == 17  # + the item-bias column
