"""The real server: ``crmscore serve`` on a free port, called over HTTP.

One test, in phases, because it starts one server (tens of seconds): open and
guarded endpoints with and without keys, a promotion swapped in by the admin
call while requests run, and finally the server's whole log checked for keys
and customer PII.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.auth import create_key
from tests.conftest_serving import ServingWorld, private_registry

pytest_plugins = ["tests.conftest_serving"]
pytestmark = pytest.mark.slow

READY_SECONDS = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"crmscore serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"not ready after {READY_SECONDS}s:\n{log.read_text()[-3000:]}")


def test_real_server_end_to_end(serving_world: ServingWorld, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from training.registry import promote

    uri = private_registry(serving_world, tmp_path)
    keys = tmp_path / "api_keys.json"
    score, _ = create_key(keys, "score")
    admin, _ = create_key(keys, "admin")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **serving_world.env(), "MLFLOW_TRACKING_URI": uri, "CRMSCORE_KEYS_FILE": str(keys),
           "CRMSCORE_LOG_LEVEL": "DEBUG"}
    log = tmp_path / "server.log"
    repo = Path(__file__).resolve().parent.parent
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "crmscore"), "serve", "--port", str(port), "--as-of", "snapshot",
             "--reload-seconds", "0"],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(url, proc, log)
        ids = serving_world.customer_ids[:3]
        auth = {"Authorization": f"Bearer {score}"}
        with httpx.Client(base_url=url, timeout=30) as http:
            # open endpoints, and the guarded ones with and without a key
            assert http.get("/healthz").status_code == 200
            assert "bentoml" in http.get("/metrics").text
            assert "/churn_risk" in http.get("/docs.json").json()["paths"]
            assert http.post("/churn_risk", json={"customer_ids": ids}).status_code == 401
            assert http.post("/churn_risk", json={"customer_ids": ids},
                             headers={"Authorization": "Bearer nope"}).status_code == 401
            assert http.post("/admin/reload", headers=auth).status_code == 403
            churn = http.post("/churn_risk", json={"customer_ids": [*ids, "C-nobody"]}, headers=auth)
            assert churn.status_code == 200, churn.text
            assert [r["status"] for r in churn.json()["results"]] == ["ok", "ok", "ok", "not_found"]
            lead = http.post("/lead_score", headers=auth, json={
                "leads": [{"lead_id": serving_world.lead_ids[0]}, {"attributes": {"source": "webinar"}}]})
            assert lead.status_code == 200 and lead.json()["results"][1]["cold_start"] is True
            nbp = http.post("/next_best_products", json={"customer_ids": ids, "k": 2}, headers=auth)
            assert nbp.status_code == 200 and all(len(r["items"]) == 2 for r in nbp.json()["results"])
            bad = http.post("/next_best_products", json={"customer_ids": ids, "k": 99}, headers=auth)
            assert bad.status_code == 400 and bad.json()["error"]

            # the client example CRM apps copy
            from serving.client_example import CrmScoreClient, CrmScoreError

            crm = CrmScoreClient(url, score)
            assert [r["status"] for r in crm.churn_risk([*ids, "C-nobody"])] == ["ok", "ok", "ok", "not_found"]
            assert len(crm.next_best_products(ids, k=2)) == 3
            with pytest.raises(CrmScoreError, match="HTTP 400"):
                crm.next_best_products(ids, k=0)
            crm.close()

            # hot reload over HTTP: promote while requests run, swap with the admin call
            answers: list[tuple[int, str]] = []
            stop = threading.Event()

            def hammer() -> None:
                with httpx.Client(base_url=url, timeout=30) as own:
                    while not stop.is_set():
                        r = own.post("/churn_risk", json={"customer_ids": ids, "explain": False}, headers=auth)
                        answers.append((r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text))

            workers = [threading.Thread(target=hammer) for _ in range(4)]
            for w in workers:
                w.start()
            try:
                time.sleep(1.0)
                client = MlflowClient(uri, uri)
                current = client.get_model_version_by_alias("crm-churn", "champion")
                v2 = str(client.create_model_version("crm-churn", source=current.source, run_id=current.run_id).version)
                promote(client, "crm-churn", v2, "test: promoted while serving")
                reloaded = http.post("/admin/reload", headers={"Authorization": f"Bearer {admin}"})
                assert reloaded.status_code == 200 and reloaded.json()["changed"] == ["crm-churn"]
                time.sleep(1.0)
            finally:
                stop.set()
                for w in workers:
                    w.join()
            assert answers and all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
            versions = [v for _, v in answers]
            assert versions[0] == "1" and versions[-1] == v2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    text = log.read_text(errors="replace")
    assert "serving version 1" in text and f"serving version {v2}" in text  # the log was captured
    for secret in (score, admin):
        assert secret not in text, "an API key reached the server log"
    for value in serving_world.pii:
        assert value not in text, "a customer's name, email or phone reached the server log"
