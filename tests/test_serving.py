"""The prediction service in process, on a tiny trained world (tests/conftest_serving.py):
every endpoint and error path over BentoML's own ASGI app, the online reader and the
encoder against Feast and the model, store outages, hot reload and what reaches the logs."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.auth import create_key
from tests.conftest_serving import ServingWorld, private_registry

pytest_plugins = ["tests.conftest_serving"]
pytestmark = pytest.mark.slow


@dataclass
class Http:
    client: Any  # starlette TestClient over CrmScoring.to_asgi()
    score_key: str
    admin_key: str
    report_key: str

    def post(self, path: str, body: Any = None, key: str | None = "score", **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {self.admin_key if key == 'admin' else self.score_key}"
        return self.client.post(path, json=body, headers=headers, **kw)


def _env(mp: pytest.MonkeyPatch, world: ServingWorld, keys: Path, **extra: str) -> None:
    from training.registry import configure_mlflow

    for name, value in {**world.env(), "CRMSCORE_KEYS_FILE": str(keys), **extra}.items():
        mp.setenv(name, value)
    configure_mlflow()


@pytest.fixture(scope="module")
def http(serving_world: ServingWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    from starlette.testclient import TestClient

    from serving.service import CrmScoring

    keys = tmp_path_factory.mktemp("keys") / "api_keys.json"
    score, _ = create_key(keys, "score")
    admin, _ = create_key(keys, "admin")
    report, _ = create_key(keys, "report")
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, serving_world, keys)
        with TestClient(CrmScoring.to_asgi()) as client:
            yield Http(client, score, admin, report)


# --- the three questions ------------------------------------------------------------------


def test_churn_risk_scores_known_ids_and_flags_unknown_ones(http: Http, serving_world: ServingWorld) -> None:
    ids = serving_world.customer_ids[:3]
    response = http.post("/churn_risk", {"customer_ids": [*ids, "C-does-not-exist", ids[0]]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "crm-churn", "version": "1", "alias": "champion"}
    results = body["results"]
    assert [r["customer_id"] for r in results] == [*ids, "C-does-not-exist", ids[0]]
    for r in results[:3]:
        assert r["status"] == "ok" and r["stale"] is False and r["cold_start"] is False
        assert 0 < r["probability"] < 1 and 1 <= r["score"] <= 99 and r["band"] in ("low", "medium", "high")
        assert r["feature_age_seconds"] == 0.0  # freshness against the newest snapshot (CRMSCORE_AS_OF)
        up, down = r["reasons"]["up"], r["reasons"]["down"]
        assert 0 < len(up) + len(down) and len(up) <= 3 and len(down) <= 3
        assert all(x["impact"] > 0 for x in up) and all(x["impact"] < 0 for x in down)
        assert [x["impact"] for x in up] == sorted((x["impact"] for x in up), reverse=True)
    missing = results[3]
    assert missing == {"customer_id": "C-does-not-exist", "status": "not_found", "detail": None,
                       "probability": None, "score": None, "reasons": None, "feature_age_seconds": None,
                       "stale": True, "cold_start": False, "band": None}
    assert results[4] == results[0]  # a repeated id gets the same answer

    fast = http.post("/churn_risk", {"customer_ids": ids, "explain": False}).json()["results"]
    assert all(r["reasons"] is None for r in fast)
    assert [r["probability"] for r in fast] == [r["probability"] for r in results[:3]]


def test_stale_features_are_scored_and_flagged(serving_world: ServingWorld, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.predictor import Predictor, ServingSettings
    from serving.schemas import ChurnRiskRequest

    _env(monkeypatch, serving_world, tmp_path / "k.json", CRMSCORE_AS_OF="2100-01-01T00:00:00Z",
         CRMSCORE_SERVE_MODELS="churn")
    predictor = Predictor(ServingSettings.from_env())
    result = predictor.churn_risk(ChurnRiskRequest(customer_ids=serving_world.customer_ids[:1])).results[0]
    assert result.status == "stale_features" and result.stale and result.probability is not None
    assert result.feature_age_seconds > 14 * 86_400


def test_lead_score_by_id_and_for_a_brand_new_lead(http: Http, serving_world: ServingWorld) -> None:
    lead_id = serving_world.lead_ids[0]
    new = {"source": "webinar", "country": "DE", "company_size": "51-200", "job_seniority": "director"}
    response = http.post("/lead_score", {"leads": [{"lead_id": lead_id}, {"attributes": new},
                                                   {"lead_id": "L-nobody"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "crm-lead-scoring" and body["model"]["version"] == "1"
    known, fresh, nobody = body["results"]
    assert known["lead_id"] == lead_id and known["status"] == "ok" and known["grade"] in "ABCD"
    assert known["cold_start"] is False and known["defaulted"] is None
    assert fresh["lead_id"] is None and fresh["status"] == "ok" and fresh["cold_start"] is True
    assert fresh["grade"] in "ABCD" and 0 < fresh["probability"] < 1
    assert {"activities_30d", "days_since_last_activity", "days_since_created"} <= set(fresh["defaulted"])
    assert not {"source", "country", "company_size", "company_size_rank", "job_seniority"} & set(fresh["defaulted"])
    assert nobody["status"] == "not_found" and nobody["grade"] is None


def test_outside_the_population_is_not_eligible_with_the_reason(http: Http, serving_world: ServingWorld) -> None:
    inactive = serving_world.inactive_customer_ids[:2]
    assert inactive, "the serving world has customers without an active subscription"
    active = serving_world.customer_ids[0]
    results = http.post("/churn_risk", {"customer_ids": [*inactive, active]}).json()["results"]
    for r in results[:2]:
        assert r["status"] == "not_eligible" and r["detail"] == "no active subscription"
        assert r["probability"] is None and r["score"] is None and r["band"] is None and r["reasons"] is None
        assert r["stale"] is False and r["feature_age_seconds"] == 0.0
    assert results[2]["status"] == "ok" and results[2]["detail"] is None

    lead_id, status = next(iter(serving_world.closed_leads.items()))
    closed, open_ = http.post("/lead_score", {"leads": [{"lead_id": lead_id},
                                                        {"lead_id": serving_world.lead_ids[0]}]}).json()["results"]
    assert closed["status"] == "not_eligible" and closed["grade"] is None and closed["probability"] is None
    assert closed["detail"].startswith(f"lead closed: {status} on 20")
    assert open_["status"] == "ok" and open_["grade"] in "ABCD"


def test_serving_and_batch_scoring_draw_the_same_population(serving_world: ServingWorld, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stored entity is either in the population batch scoring scores at the snapshot, or
    not_eligible at the service: the task registry's one rule, evaluated from the lake and from
    the online row."""
    from features.build import read_build_summary
    from serving.predictor import Predictor, ServingSettings
    from serving.schemas import ChurnRiskRequest, LeadInput, LeadScoreRequest
    from training.tasks import CHURN, LEAD

    _env(monkeypatch, serving_world, tmp_path / "k.json", CRMSCORE_SERVE_MODELS="churn,lead")
    predictor = Predictor(ServingSettings.from_env())
    as_of = max(read_build_summary(serving_world.ws.feature_tables).as_of)
    customers = serving_world.customer_ids + serving_world.inactive_customer_ids
    answers = predictor.churn_risk(ChurnRiskRequest(customer_ids=customers[:1000])).results
    scored = {r.customer_id for r in answers if r.status == "ok"}
    batch = set(CHURN.population.from_lake(serving_world.ws.lake, as_of, "subscription")["customer_id"])
    assert scored == batch & set(customers[:1000]) and 0 < len(scored) < len(answers)

    leads = serving_world.lead_ids + list(serving_world.closed_leads)
    answers = predictor.lead_score(LeadScoreRequest(leads=[LeadInput(lead_id=i) for i in leads[:1000]])).results
    scored = {r.lead_id for r in answers if r.status == "ok"}
    batch = set(LEAD.population.from_lake(serving_world.ws.lake, as_of)["lead_id"])
    assert scored == batch & set(leads[:1000]) and 0 < len(scored) < len(answers)


def test_an_unknown_custom_attribute_is_a_400_with_the_reason(http: Http) -> None:
    response = http.post("/lead_score", {"leads": [{"attributes": {"source": "web"}},
                                                   {"attributes": {"custom": {"shoe_size": 44}}}]})
    assert response.status_code == 400
    assert "leads[1]" in response.json()["error"] and "shoe_size" in response.json()["error"]


def test_next_best_products(http: Http, serving_world: ServingWorld) -> None:
    ids = serving_world.customer_ids[:5]
    body = http.post("/next_best_products", {"customer_ids": [*ids, "C-nobody"], "k": 3}).json()
    assert body["model"]["name"] == "crm-next-best-product" and body["model"]["version"] == "1"
    results = body["results"]
    for r in results[:5]:
        assert r["status"] in ("ok", "stale_features") and 1 <= len(r["items"]) <= 3
        assert all(item["reason"] for item in r["items"])
        scores = [item["score"] for item in r["items"]]
        assert scores == sorted(scores, reverse=True)
    assert results[5] == {"customer_id": "C-nobody", "status": "not_found", "detail": None, "items": [],
                          "feature_age_seconds": None, "stale": True, "cold_start": False}
    top = [r["items"][0]["product_id"] for r in results[:5]]
    again = http.post("/next_best_products", {"customer_ids": ids, "k": 3, "exclude": top}).json()["results"]
    assert all(not set(top) & {i["product_id"] for i in r["items"]} for r in again)


# --- bad input: a 4xx with a message, never a 500 ------------------------------------------


@pytest.mark.parametrize(("path", "payload"), [
    ("/churn_risk", b"{not json"),
    ("/churn_risk", b""),
    ("/churn_risk", b'{"customer_ids": "C1"}'),
    ("/churn_risk", b'{"customer_ids": []}'),
    ("/churn_risk", b'{"customer_ids": ["C1"], "explain": "perhaps"}'),
    ("/churn_risk", b'{"customer_ids": [' + b",".join([b'"C1"'] * 1001) + b"]}"),
    ("/churn_risk", b'{"customer_ids": ["C1"], "url": "http://example.com/x.pkl"}'),
    ("/lead_score", b'{"leads": []}'),
    ("/lead_score", b'{"leads": [{"attributes": {"custom": {"score": NaN}}}]}'),
    ("/lead_score", b'{"leads": [{"attributes": {"custom": {"score": -Infinity}}}]}'),
    ("/lead_score", b'{"leads": [{"lead_id": "L1", "attributes": {}}]}'),
    ("/next_best_products", b'{"customer_ids": ["C1"], "k": 0}'),
    ("/next_best_products", b'{"customer_ids": ["C1"], "k": 51}'),
    ("/next_best_products", b'{"customer_ids": ["C1"], "exclude": "P1"}'),
])
def test_bad_input_is_a_400_with_a_message(http: Http, path: str, payload: bytes) -> None:
    response = http.client.post(path, content=payload, headers={
        "Authorization": f"Bearer {http.score_key}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]


def test_security_status_codes_and_open_endpoints(http: Http) -> None:
    body = {"customer_ids": ["C1"]}
    assert http.post("/churn_risk", body, key=None).status_code == 401
    assert http.client.post("/churn_risk", json=body, headers={"Authorization": "Bearer crm_score_wrong"}).status_code == 401
    assert http.post("/admin/reload", key="score").status_code == 403
    assert http.post("/admin/reload", key="admin").status_code == 200
    assert http.post("/churn_risk", body, key="admin").status_code == 200
    huge = {"customer_ids": ["C" * 128] * 1000, "pad": "x" * (1 << 20)}
    assert http.post("/churn_risk", huge).status_code == 413
    pickle = http.client.post("/churn_risk", content=b"\x80\x04K\x01.", headers={
        "Authorization": f"Bearer {http.score_key}", "Content-Type": "application/vnd.bentoml+pickle"})
    assert pickle.status_code == 415
    for path in ("/healthz", "/livez", "/metrics", "/docs.json"):
        response = http.client.get(path)
        assert response.status_code == 200, (path, response.text)
    # Readiness is the prober's live verdict (a store read within its deadline, every 0.5 s): on a
    # loaded machine one probe can miss, and the next one says ready again.
    assert _readyz_within(http, 200, seconds=10.0) == {"ready": True, "reasons": []}
    # (the metrics' content needs the server's multiprocess registry: test_serving_e2e.py checks it)
    docs = http.client.get("/docs.json").json()
    assert {"/churn_risk", "/lead_score", "/next_best_products"} <= set(docs["paths"])


def test_report_page_needs_a_report_or_admin_key(http: Http, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /report through the whole service: the guard checks the key before the page is read."""
    from crmdata.workspace import Workspace
    from serving.report import NO_REPORT, latest_html

    report_key = http.report_key
    def get(key: str | None) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return http.client.get("/report", headers=headers)

    # The page is read from the workspace per request: point it at an empty one.
    monkeypatch.setenv("CRMSCORE_HOME", str(tmp_path))
    assert get(None).status_code == 401
    assert get(http.score_key).status_code == 403
    missing = get(report_key)
    assert missing.status_code == 404 and missing.json() == {"error": NO_REPORT, "detail": None}
    page = latest_html(Workspace(tmp_path))
    page.parent.mkdir(parents=True)
    page.write_text("<html><body>the report</body></html>")
    for key in (report_key, http.admin_key):
        response = get(key)
        assert response.status_code == 200 and "the report" in response.text
    # A report key opens nothing else.
    assert http.client.post("/churn_risk", json={"customer_ids": ["C1"]},
                            headers={"Authorization": f"Bearer {report_key}"}).status_code == 403
    assert http.client.post("/report", headers={"Authorization": f"Bearer {report_key}"}).status_code == 405


def test_admin_models_lists_what_is_served(http: Http) -> None:
    models = http.post("/admin/models", key="admin").json()["models"]
    assert {(m["name"], m["version"], m["alias"]) for m in models} == {
        ("crm-churn", "1", "champion"), ("crm-lead-scoring", "1", "champion"),
        ("crm-next-best-product", "1", "champion"), ("crm-customer-value", "1", "champion")}


# --- the request path matches Feast and the model -------------------------------------------


def test_reader_returns_what_feast_returns(serving_world: ServingWorld) -> None:
    from datetime import UTC, datetime

    from features.online import read_online
    from features.store import feature_store
    from serving.online import OnlineReader

    store = feature_store(serving_world.ws)
    ids = [*serving_world.customer_ids[:40], "C-nobody", serving_world.customer_ids[0]]
    now = datetime(2100, 1, 1, tzinfo=UTC)
    expected = read_online(store, "churn_v1", ids, now=now, fast=False)
    rows = OnlineReader(store, "churn_v1").read(ids, now)
    assert rows.found == [True] * 40 + [False, True]
    assert rows.stale == expected.stale
    assert rows.age_seconds == pytest.approx(expected.max_age_seconds)
    assert set(rows.values) == set(expected.columns) - {"customer_id"}
    for feature, values in rows.values.items():
        for got, want in zip(values, list(expected.columns[feature]), strict=True):
            assert (pd.isna(got) and pd.isna(want)) or got == pytest.approx(want), feature


def test_grouped_sqlite_read_equals_feast_where_the_text_cannot_say_the_value(
        serving_world: ServingWorld, tmp_path: Path) -> None:
    """The SQLite reader takes values from Feast's ``value_text`` (one row per entity);
    where the text cannot give the value the stored blob does, it must read the blob: a
    string holding the reader's separators, an int stored in a float column, a value
    without text, a stored null. On a copy of the store, against Feast's own read."""
    import shutil
    from datetime import UTC, datetime

    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    from crmdata.workspace import Workspace
    from features.codec import entity_keys
    from features.online import read_online
    from features.store import feature_store

    home = tmp_path / "home"
    shutil.copytree(serving_world.ws.home / "feast", home / "feast")
    store = feature_store(Workspace(home))
    kinds = {f.name: f.dtype.to_value_type().name for f in store.get_feature_view("customer_features").features}
    text = next(n for n, k in kinds.items() if k == "STRING")
    number = next(n for n, k in kinds.items() if k == "DOUBLE")
    ids = serving_world.customer_ids[:5]
    keys = entity_keys(("customer_id",), [(i,) for i in ids], store.config.entity_key_serialization_version)
    db = home / "feast" / "online_store.db"
    table = next(t for (t,) in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")
                 if t.endswith("customer_features"))
    edits = [  # (entity, feature, stored ValueProto, value_text)
        (keys[0], text, ValueProto(string_val="a\x1eb\x1fc\x1dd"), "a\x1eb\x1fc\x1dd"),
        (keys[1], number, ValueProto(int64_val=3), "3"),
        (keys[2], number, ValueProto(double_val=2.5), None),
        (keys[3], number, ValueProto(), None),
    ]
    with sqlite3.connect(db) as conn:
        for key, feature, proto, value_text in edits:
            conn.execute(f'update "{table}" set value = ?, value_text = ? where entity_key = ? and feature_name = ?',
                         (proto.SerializeToString(), value_text, key, feature))
    now = datetime(2100, 1, 1, tzinfo=UTC)
    fast = read_online(store, "churn_v1", ids, now=now)
    sdk = read_online(store, "churn_v1", ids, now=now, fast=False)
    assert fast.freshness == sdk.freshness and fast.found == [True] * 5
    assert fast.columns[text][0] == "a\x1eb\x1fc\x1dd"
    assert [fast.columns[number][i] for i in (1, 2, 3)] == [3, 2.5, None]
    for feature, values in fast.columns.items():
        for got, want in zip(values, list(sdk.columns[feature]), strict=True):
            assert type(got) is type(want) and (got == want or (pd.isna(got) and pd.isna(want))), (feature, got, want)


def test_encoder_and_reasons_match_the_scoring_model(serving_world: ServingWorld, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from features.store import feature_store
    from serving.online import OnlineReader
    from serving.scoring import BinaryScorer
    from training.model import load_model

    _env(monkeypatch, serving_world, tmp_path / "k.json")
    model = load_model("crm-churn")
    rows = OnlineReader(feature_store(serving_world.ws), "churn_v1").read(serving_world.customer_ids[:25],
                                                                           datetime.now(UTC))
    frame = pd.DataFrame(rows.values)
    scored = BinaryScorer(model).score(rows.values, 25, explain=True)
    expected = model.score(frame)
    np.testing.assert_allclose(scored.probability, expected["probability"])
    assert list(scored.grade) == expected["grade"].tolist() and list(scored.score) == expected["score"].tolist()
    for got, want in zip(scored.reasons, model.reasons(frame), strict=True):
        for side in ("up", "down"):
            assert [(r.feature, r.impact) for r in got[side]] == [(r.feature, pytest.approx(r.impact)) for r in want[side]]
            for a, b in zip(got[side], want[side], strict=True):
                assert a.value == b.value or (isinstance(a.value, int | float) and a.value == pytest.approx(b.value))


# --- the store goes away and comes back ------------------------------------------------------


def test_store_outage_is_a_503_and_readyz_recovers_by_itself(http: Http, serving_world: ServingWorld,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import features.online

    body = {"customer_ids": serving_world.customer_ids[:2]}
    real = features.online.read_online

    def down(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(features.online, "read_online", down)
    for path in ("/churn_risk", "/next_best_products", "/lead_score"):
        payload = body if path != "/lead_score" else {"leads": [{"lead_id": serving_world.lead_ids[0]}]}
        response = http.post(path, payload)
        assert response.status_code == 503, response.text
        assert "online store unavailable" in response.json()["error"]
    assert _readyz_within(http, 503, seconds=2.0)["ready"] is False
    assert http.client.get("/healthz").status_code == 200  # alive, just not ready

    monkeypatch.setattr(features.online, "read_online", real)
    assert _readyz_within(http, 200, seconds=5.0) == {"ready": True, "reasons": []}
    assert http.post("/churn_risk", body).status_code == 200


def _readyz_within(http: Http, status: int, seconds: float) -> dict[str, Any]:
    """/readyz's body once it answers ``status`` (the prober's verdict moves every 0.5 s)."""
    deadline = time.monotonic() + seconds
    while True:
        response = http.client.get("/readyz")
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response.json()
        time.sleep(0.05)


def test_a_model_without_champion_is_a_503_and_not_ready(serving_world: ServingWorld, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from serving.predictor import Predictor, ServingSettings, Unavailable
    from serving.schemas import LeadInput, LeadScoreRequest

    uri = private_registry(serving_world, tmp_path)
    MlflowClient(uri, uri).delete_registered_model_alias("crm-lead-scoring", "champion")
    _env(monkeypatch, serving_world, tmp_path / "k.json", MLFLOW_TRACKING_URI=uri, CRMSCORE_SERVE_MODELS="churn,lead")
    predictor = Predictor(ServingSettings.from_env())
    assert not predictor.ready()
    with pytest.raises(Unavailable, match="crm-lead-scoring is not available: .*has no @champion"):
        predictor.lead_score(LeadScoreRequest(leads=[LeadInput(lead_id="L1")]))
    assert predictor.loaded_models()[0].version == "1"


# --- hot reload --------------------------------------------------------------------------------


def _new_version(uri: str, name: str) -> str:
    """Register a new version of ``name`` from the current champion's artifacts."""
    from mlflow import MlflowClient

    client = MlflowClient(uri, uri)
    current = client.get_model_version_by_alias(name, "champion")
    return str(client.create_model_version(name, source=current.source, run_id=current.run_id).version)


def test_hot_reload_swaps_versions_under_load_without_failing_a_request(
        serving_world: ServingWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, on the predictor (BentoML's metrics allow one app per process; the admin
    call over real HTTP is in test_serving_e2e.py): an admin reload, then the registry poll."""
    from mlflow import MlflowClient

    from serving.predictor import Predictor, ServingSettings
    from serving.schemas import ChurnRiskRequest
    from training.registry import promote

    uri = private_registry(serving_world, tmp_path)
    _env(monkeypatch, serving_world, tmp_path / "k.json", MLFLOW_TRACKING_URI=uri, CRMSCORE_RELOAD_SECONDS="0.3",
         CRMSCORE_SERVE_MODELS="churn")
    settings = ServingSettings.from_env()
    predictor = Predictor(settings)
    client = MlflowClient(uri, uri)
    request = ChurnRiskRequest(customer_ids=serving_world.customer_ids[:20])
    answers: list[tuple[float, str, float]] = []  # (started, version, probability of the first id)
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = predictor.churn_risk(request)
            except Exception as exc:  # noqa: BLE001  (any failure is a test failure)
                errors.append(exc)
                return
            answers.append((started, response.model.version, response.results[0].probability))

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.3)
        v2 = _new_version(uri, "crm-churn")
        promote(client, "crm-churn", v2, "test: hot reload by admin call")
        predictor.reload()  # what POST /admin/reload does
        swapped_at = time.monotonic()
        assert predictor.champions.get("crm-churn").version == v2
        time.sleep(0.3)
        predictor.champions.start_polling(settings.reload_seconds)
        v3 = _new_version(uri, "crm-churn")
        promote(client, "crm-churn", v3, "test: hot reload by poll")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and predictor.champions.get("crm-churn").version != v3:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join()
        predictor.close()

    assert not errors, errors[:1]
    versions = [v for _, v, _ in answers]
    assert {"1", v2, v3} <= set(versions) and versions[-1] == v3
    # A request that started after the swap never answers with the old version.
    assert all(v != "1" for started, v, _ in answers if started > swapped_at)
    # Same artifacts, same answers: only the version moved.
    assert len({p for _, _, p in answers}) == 1


# --- nothing private reaches the logs ---------------------------------------------------------


def test_logs_never_carry_pii_or_keys(http: Http, serving_world: ServingWorld,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("serving").setLevel(logging.DEBUG)
    try:
        ids = serving_world.customer_ids[:5]
        http.post("/churn_risk", {"customer_ids": ids})
        http.post("/lead_score", {"leads": [{"lead_id": serving_world.lead_ids[0]},
                                            {"attributes": {"source": "web", "custom": {"x": 1}}}]})
        http.post("/next_best_products", {"customer_ids": ids, "k": 5})
        http.post("/churn_risk", {"customer_ids": ids}, key=None)
        http.client.post("/churn_risk", json={"customer_ids": ids}, headers={"Authorization": "Bearer crm_score_guess"})
        http.post("/admin/reload", key="score")
        http.post("/admin/reload", key="admin")
        # PII sent by mistake is rejected without being echoed or logged.
        leaked = serving_world.pii[:3]
        http.post("/lead_score", {"leads": [{"attributes": {"name": leaked[0], "email": leaked[1]}}]})
        http.post("/churn_risk", {"customer_ids": leaked[2]})
    finally:
        logging.getLogger("serving").setLevel(logging.INFO)
    text = caplog.text
    assert "churn_risk" in text  # the logs were captured at all
    for secret in (http.score_key, http.admin_key, "crm_score_guess"):
        assert secret not in text
    for value in serving_world.pii:
        assert value not in text, "a customer's name, email or phone reached the logs"


# --- never "ok" without the features; hostile input -------------------------------------------


def test_a_partial_row_is_incomplete_features_and_an_empty_store_is_never_ok(
        serving_world: ServingWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a copy of the SQLite online store: delete some fields of one customer and every
    row of another; neither may be answered "ok"; materialize rewrites the partial row."""
    import shutil

    from crmdata.workspace import Workspace
    from features.materialize import materialize_latest
    from features.store import feature_store
    from serving.predictor import Predictor, ServingSettings
    from serving.schemas import ChurnRiskRequest, NextBestProductsRequest

    home = tmp_path / "home"
    shutil.copytree(serving_world.ws.home, home, ignore=shutil.ignore_patterns("mlflow"))
    _env(monkeypatch, serving_world, tmp_path / "k.json", CRMSCORE_HOME=str(home), CRMSCORE_SERVE_MODELS="churn,nbp")
    store = feature_store(Workspace(home))
    predictor = Predictor(ServingSettings.from_env(), store=store)
    partial, gone, fine = serving_world.customer_ids[:3]
    db = next((home / "feast").rglob("online_store.db"), None) or next(home.rglob("*.db"))
    table = next(t for (t,) in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")
                 if t.endswith("customer_features"))
    from features.codec import entity_keys

    version = store.config.entity_key_serialization_version
    key_partial, key_gone = entity_keys(("customer_id",), [(partial,), (gone,)], version)
    with sqlite3.connect(db) as conn:
        names = [n for (n,) in conn.execute(f'select feature_name from "{table}" where entity_key = ? limit 5',
                                            (key_partial,))]
        conn.execute(f'delete from "{table}" where entity_key = ? and feature_name in ({",".join("?" * 5)})',
                     (key_partial, *names))
        conn.execute(f'delete from "{table}" where entity_key = ?', (key_gone,))

    churn = predictor.churn_risk(ChurnRiskRequest(customer_ids=[partial, gone, fine])).results
    assert churn[0].status == "incomplete_features" and churn[0].probability is None
    assert all(n in (churn[0].detail or "") for n in names)
    assert churn[1].status == "not_found" and churn[2].status == "ok"
    nbp = predictor.next_best_products(NextBestProductsRequest(customer_ids=[partial, gone, fine])).results
    assert [r.status for r in nbp] == ["incomplete_features", "not_found", "ok"]
    assert nbp[0].items == [] and nbp[1].items == [] and nbp[1].cold_start is False

    materialize_latest(store, Workspace(home).feature_tables)
    again = predictor.churn_risk(ChurnRiskRequest(customer_ids=[partial, gone])).results
    assert [r.status for r in again] == ["ok", "ok"]
    predictor.close()


def test_hostile_input_gets_the_error_schema_and_stays_out_of_the_logs(
        http: Http, serving_world: ServingWorld, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.schemas import ErrorResponse

    caplog.set_level(logging.DEBUG)
    # The guard's log and BentoML's access log (which carries the path as sent) are what is
    # judged; another test's logging setup (a dictConfig) may have disabled or detached them
    # in this process: make sure their records reach caplog.
    for name in ("serving", "serving.auth", "bentoml.access"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "disabled", False)
        monkeypatch.setattr(logger, "propagate", True)
        monkeypatch.setattr(logger, "level", logging.DEBUG)
    email, name = serving_world.pii[len(serving_world.pii) // 3], serving_world.pii[0]
    auth = {"Authorization": f"Bearer {http.score_key}"}
    hostile = [
        ("/churn_risk", {"customer_ids": ["C1"], http.score_key: 1}),
        ("/lead_score", {"leads": [{"attributes": {"custom": {email: 1, name: "x"}}}]}),
        ("/churn_risk", {"customer_ids": ["C1"], "explain": 0}),
        ("/next_best_products", {"customer_ids": ["C1"], "k": "10"}),
        ("/next_best_products", {"customer_ids": ["C1"], "k": True}),
        ("/lead_score", {"leads": [{}]}),
    ]
    for path, body in hostile:
        response = http.client.post(path, json=body, headers=auth)
        assert response.status_code == 400, (path, response.text)
        error = ErrorResponse.model_validate(response.json())
        assert error.detail and http.score_key not in response.text and email not in response.text
    two = http.client.post("/churn_risk", json={"customer_ids": ["C1"]},
                           headers=[("Authorization", "Bearer nope"), ("Authorization", auth["Authorization"])])
    assert two.status_code == 400
    for path, status in (("/churn_risk/", 404), ("/churn_risk%0a2026 [INFO] FORGED%1b[2J", 404), ("/nope", 404)):
        response = http.client.post(path, json={}, headers={**auth, "Host": "evil.example"},
                                    follow_redirects=False)
        assert response.status_code == status and "location" not in response.headers
        ErrorResponse.model_validate(response.json())
    assert http.client.get("/churn_risk").status_code == 405
    wrong_kind = http.post("/lead_score", {"leads": [{"attributes": {"source": "web", "custom": {"x": "lots"}}}]})
    assert wrong_kind.status_code in (200, 400)  # 400 when the model has no custom attribute x
    # The server's records only: the test client (httpx) logs the URLs it was asked to send.
    text = "\n".join(caplog.handler.format(r) for r in caplog.records
                     if not r.name.startswith(("httpx", "httpcore")))
    assert "validation error" in text
    for secret in (http.score_key, email, name):
        assert secret not in text
    # The path is logged, escaped: on its own line, with no raw escape character.
    assert "\n2026 [INFO] FORGED" not in text and "\x1b" not in text and "FORGED\\x1b[2J" in text
    assert "Traceback" not in text


def test_docs_json_documents_the_errors_and_the_service(http: Http) -> None:
    from serving.openapi import package_version

    docs = http.client.get("/docs.json").json()
    assert docs["info"]["title"] == "crmscore" and docs["info"]["version"] == package_version()
    assert "churn risk" in docs["info"]["description"]
    for path in ("/churn_risk", "/lead_score", "/next_best_products", "/admin/reload"):
        operation = docs["paths"][path]["post"]
        assert {"400", "401", "403", "404", "405", "413", "415", "503"} <= set(map(str, operation["responses"]))
        assert operation["requestBody"]["content"]["application/json"]["example"] is not None
    assert docs["components"]["schemas"]["LeadInput"]["oneOf"]
    assert docs["components"]["schemas"]["ErrorResponse"]["properties"]["detail"]
