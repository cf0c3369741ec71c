"""POST /customer_value: the request-path scorer against the model's own predict (fast, a
hand-built model), and the real server over a socket on the tiny serving world (slow): a
missing champion keeps /readyz red with the reason, a promoted one is swapped in by the
admin call, and then every status, field and reason is what the model says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.test_score_value import VALUE_FEATURES, train_value_model, value_frame

pytest_plugins = ["tests.conftest_serving"]


def _online_columns(frame: pd.DataFrame) -> dict[str, list[Any]]:
    """The frame as the online store hands it over: a Python list per feature, None for missing."""
    return {c: [None if isinstance(v, float) and np.isnan(v) else v for v in frame[c].tolist()]
            for c in frame.columns}


def test_the_request_path_answers_what_the_model_predicts() -> None:
    from serving.scoring import ValueScorer

    frame, y = value_frame()
    model = train_value_model(frame, y, VALUE_FEATURES, ["rfm_segment"], "customer_value")
    rows = frame.iloc[:60].reset_index(drop=True)
    scored = ValueScorer(model).score(_online_columns(rows), len(rows), explain=True)
    want = model.predict(rows)
    assert scored.clv.tolist() == want["clv"].tolist()
    assert scored.clv_low.tolist() == want["clv_low"].tolist()
    assert scored.clv_high.tolist() == want["clv_high"].tolist()
    assert scored.expected_margin.tolist() == want["expected_margin"].tolist()
    assert scored.tier.tolist() == want["tier"].tolist()
    assert "D" in scored.tier.tolist()  # a customer whose cost to serve exceeds the margin
    reasons = model.reasons(rows)
    assert scored.reasons is not None
    for got, expected in zip(scored.reasons, reasons, strict=True):
        for side in ("up", "down"):
            assert [(r.feature, r.value, r.impact) for r in got[side]] == \
                   [(r.feature, r.value, r.impact) for r in expected[side]]
    assert ValueScorer(model).score(_online_columns(rows), len(rows), explain=False).reasons is None


# --- the real server ------------------------------------------------------------------------

#: The model's features: the value view's and two of the customer view's (the service serves both).
WORLD_FEATURES = [*VALUE_FEATURES, "logins_30d", "tickets_90d"]
READY_SECONDS = 240


def _newest_features(home: Path) -> pd.DataFrame:
    """Every customer's row of the newest snapshot, customer and value views side by side."""
    import polars as pl

    from features.catalog import VALUE_TABLE, table_file

    tables = home / "features"
    frames = []
    for table in ("customer", VALUE_TABLE):
        frame = pl.read_parquet(tables / table_file(table))
        frames.append(frame.filter(pl.col("event_timestamp") == frame["event_timestamp"].max()).drop("event_timestamp"))
    joined = frames[0].join(frames[1], on="customer_id", how="inner", suffix="_value").sort("customer_id")
    return joined.to_pandas()


def _register(uri: str, model: Any, tmp: Path) -> str:
    """Log the model's files as a run of the private registry, register them, make them champion."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from training.registry import ensure_experiment, promote
    from training.value.scorer import save_value_files

    client = MlflowClient(uri, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = ensure_experiment(client, model.name)
    files = tmp / "value_model"
    save_value_files(files, model.spec, model.boosters)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(files), "model")
    try:
        client.create_registered_model(model.name)
    except MlflowException:
        pass  # already there
    version = client.create_model_version(model.name, source=f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    promote(client, model.name, str(version.version), "test: a hand-trained value model")
    return str(version.version)


@pytest.mark.slow
def test_customer_value_over_a_real_socket(serving_world: Any, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from mlflow import MlflowClient

    from serving.auth import create_key
    from tests.conftest_serving import free_port, private_registry
    from training.registry import version_by_alias
    from training.tasks import VALUE

    uri = private_registry(serving_world, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    registry = MlflowClient(uri, uri)
    if version_by_alias(registry, VALUE.model_name, "champion") is not None:  # a world that has one
        registry.delete_registered_model_alias(VALUE.model_name, "champion")
    keys = tmp_path / "api_keys.json"
    score, _ = create_key(keys, "score")
    admin, _ = create_key(keys, "admin")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **serving_world.env(), "MLFLOW_TRACKING_URI": uri, "CRMSCORE_KEYS_FILE": str(keys),
           "CRMSCORE_SERVE_MODELS": f"churn,{VALUE.key}"}
    log = tmp_path / "server.log"
    repo = Path(__file__).resolve().parent.parent
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "crmscore"), "serve", "--port", str(port), "--as-of", "snapshot",
             "--reload-seconds", "0"], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    auth = {"Authorization": f"Bearer {score}"}
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            # 1. No value champion: the service starts, serves churn, and /readyz says why it is not ready.
            reasons = _not_ready_reasons(http, proc, log)
            assert f"{VALUE.model_name}: {VALUE.model_name} has no @champion; train one with `crmscore train`" \
                in reasons, reasons
            missing = http.post("/customer_value", json={"customer_ids": ["C1"]}, headers=auth)
            assert missing.status_code == 503 and missing.json() == {
                "error": f"{VALUE.model_name} is not available: {VALUE.model_name} has no @champion; "
                         "train one with `crmscore train`"}
            assert http.post("/churn_risk", json={"customer_ids": serving_world.customer_ids[:1]},
                             headers=auth).status_code == 200

            # 2. A champion appears; the admin call swaps it in like any other.
            features = _newest_features(serving_world.ws.home)
            rng = np.random.default_rng(5)
            spend = pd.to_numeric(features["value_spend_365"]).fillna(0).to_numpy()
            y = np.where(rng.random(len(features)) < 0.6, 0.9 * spend + rng.gamma(2.0, 15.0, len(features)), 0.0)
            model = train_value_model(features, y, WORLD_FEATURES, ["rfm_segment"], VALUE.feature_service)
            version = _register(uri, model, tmp_path)
            reloaded = http.post("/admin/reload", headers={"Authorization": f"Bearer {admin}"})
            assert reloaded.status_code == 200 and reloaded.json()["changed"] == [VALUE.model_name]
            assert _ready(http)

            # 3. Every field is the model's answer on the stored features.
            ids = features["customer_id"].tolist()[:5]
            body = http.post("/customer_value", json={"customer_ids": [*ids, "C-nobody", ids[0]]}, headers=auth)
            assert body.status_code == 200, body.text
            answer = body.json()
            assert answer["model"] == {"name": VALUE.model_name, "version": version, "alias": "champion"}
            assert answer["horizon_days"] == model.settings.horizon_days
            assert answer["interval_level"] == model.settings.interval_level
            results = answer["results"]
            assert [r["status"] for r in results] == ["ok"] * 5 + ["not_found", "ok"]
            assert results[6] == results[0]
            assert results[5] == {"customer_id": "C-nobody", "status": "not_found", "detail": None, "clv": None,
                                  "clv_low": None, "clv_high": None, "expected_margin": None, "p_alive": None,
                                  "expected_orders": None, "rfm": None, "tier": None, "reasons": None,
                                  "feature_age_seconds": None, "stale": True, "cold_start": False}
            rows = features.iloc[:5].reset_index(drop=True)
            want, why = model.predict(rows), model.reasons(rows)
            for i, r in enumerate(results[:5]):
                assert r["customer_id"] == ids[i] and r["feature_age_seconds"] == 0.0 and r["stale"] is False
                for column in ("clv", "clv_low", "clv_high", "expected_margin"):
                    assert r[column] == pytest.approx(want[column][i], rel=1e-12), column
                assert r["tier"] == want["tier"][i]
                assert r["clv_low"] <= r["clv_high"]
                assert r["p_alive"] == _plain(rows["peer_p_alive"][i])
                assert r["expected_orders"] == _plain(rows["peer_expected_orders"][i])
                assert r["rfm"] == {"r": _plain(rows["rfm_r"][i]), "f": _plain(rows["rfm_f"][i]),
                                    "m": _plain(rows["rfm_m"][i]), "segment": _plain(rows["rfm_segment"][i])}
                for side in ("up", "down"):
                    assert [(x["feature"], x["value"]) for x in r["reasons"][side]] == \
                           [(x.feature, _plain(x.value)) for x in why[i][side]]
                    assert [x["impact"] for x in r["reasons"][side]] == \
                           pytest.approx([x.impact for x in why[i][side]], rel=1e-12)
            fast = http.post("/customer_value", json={"customer_ids": ids, "explain": False}, headers=auth).json()
            assert [r["reasons"] for r in fast["results"]] == [None] * 5
            assert [r["clv"] for r in fast["results"]] == [r["clv"] for r in results[:5]]

            from serving.client_example import CrmScoreClient

            crm = CrmScoreClient(url, score)
            assert [r["tier"] for r in crm.customer_value(ids, explain=False)] == [r["tier"] for r in results[:5]]
            crm.close()

            # 4. The documented errors, and the docs.
            too_many = http.post("/customer_value", json={"customer_ids": ["C1"] * 1001}, headers=auth)
            assert too_many.status_code == 400 and too_many.json()["detail"][0]["loc"][-1] == "customer_ids"
            assert http.post("/customer_value", json={"customer_ids": ids}).status_code == 401
            assert http.post("/customer_value", json={"customer_ids": ids, "k": 3}, headers=auth).status_code == 400
            docs = http.get("/docs.json").json()["paths"]["/customer_value"]["post"]
            assert {"200", "400", "401", "413", "415", "503"} <= set(docs["responses"])
            assert docs["requestBody"]["content"]["application/json"]["example"]["customer_ids"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text(errors="replace")
    assert f"{VALUE.model_name}: serving version {version}" in text
    for secret in (score, admin):
        assert secret not in text


def _plain(value: Any) -> Any:
    """A stored value as JSON gives it back (numpy scalars -> Python, NaN/None -> None)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def _not_ready_reasons(http: Any, proc: subprocess.Popen[bytes], log: Path) -> list[str]:
    """/readyz's reasons once the server is up and has checked (it answers 503 here)."""
    import httpx

    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"crmscore serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            response = http.get("/readyz", timeout=2)
            if response.status_code == 503 and response.json()["reasons"] != ["not checked yet"]:
                return response.json()["reasons"]
            assert response.status_code != 200, "ready without a value champion"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"no /readyz answer after {READY_SECONDS}s:\n{log.read_text()[-3000:]}")


def _ready(http: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if http.get("/readyz").status_code == 200:
            return True
        time.sleep(0.2)
    return False
