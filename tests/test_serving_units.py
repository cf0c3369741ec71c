"""Serving code tests that need no trained world: keys, the HTTP guard, schemas,
new-lead features and the champion swap (the encoder: tests/test_encoding.py)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from crmdata.errors import CrmscoreError
from serving.auth import (
    ApiGuard,
    KeyRing,
    KeyScope,
    create_key,
    hash_key,
    read_keys,
    required_scope,
)
from serving.champions import Champions, Loaded, Slot
from serving.predictor import BadRequest, new_lead_features
from serving.schemas import ChurnRiskRequest, LeadScoreRequest, NewLead, NextBestProductsRequest

# --- keys -------------------------------------------------------------------------------


def test_a_key_is_shown_once_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "api_keys.json"
    key, row = create_key(path, "score", note="crm app")
    admin, _ = create_key(path, KeyScope.ADMIN)
    text = path.read_text()
    assert key not in text and admin not in text
    assert hash_key(key) in text and row.id == hash_key(key)[:8]
    assert path.stat().st_mode & 0o777 == 0o600
    assert [(k.scope, k.note) for k in read_keys(path)] == [(KeyScope.SCORE, "crm app"), (KeyScope.ADMIN, "")]
    ring = KeyRing(path)
    assert ring.scope_of(key) == KeyScope.SCORE and ring.scope_of(admin) == KeyScope.ADMIN
    assert ring.scope_of(key + "x") is None and ring.scope_of("") is None


def test_a_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    path.write_text("not json")
    with pytest.raises(CrmscoreError, match="not a crmscore key file"):
        read_keys(path)


def test_keys_created_later_apply_without_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serving.auth.RECHECK_SECONDS", 0.0)
    path = tmp_path / "api_keys.json"
    ring = KeyRing(path)
    assert len(ring) == 0
    key, _ = create_key(path, "score")
    assert ring.scope_of(key) == KeyScope.SCORE


@pytest.mark.parametrize(("path", "scope"), [
    ("/healthz", None), ("/readyz", None), ("/livez", None), ("/metrics", None), ("/docs.json", None),
    ("/", None), ("/churn_risk", KeyScope.SCORE), ("/lead_score", KeyScope.SCORE),
    ("/next_best_products", KeyScope.SCORE), ("/anything", KeyScope.SCORE), ("/admin/reload", KeyScope.ADMIN),
])
def test_which_paths_need_which_scope(path: str, scope: KeyScope | None) -> None:
    assert required_scope(path) == scope


# --- the guard, on a bare ASGI app ------------------------------------------------------


def _echo_app(received: list[bytes]) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        received.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.fixture()
def guarded(tmp_path: Path) -> tuple[Any, str, str, list[bytes]]:
    from starlette.testclient import TestClient

    path = tmp_path / "api_keys.json"
    score, _ = create_key(path, "score")
    admin, _ = create_key(path, "admin")
    received: list[bytes] = []
    client = TestClient(ApiGuard(_echo_app(received), keys_path=path, max_body_bytes=1000))
    return client, score, admin, received


def test_guard_answers_401_403_and_lets_the_right_key_through(guarded: tuple) -> None:
    client, score, admin, received = guarded
    body = {"customer_ids": ["C1"]}
    no_key = client.post("/churn_risk", json=body)
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in no_key.json()["error"]
    assert client.post("/churn_risk", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/churn_risk", json=body, headers={"Authorization": f"Basic {score}"}).status_code == 401
    assert client.post("/churn_risk", json=body, headers={"Authorization": f"Bearer {score}"}).status_code == 200
    assert client.post("/churn_risk", json=body, headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    forbidden = client.post("/admin/reload", headers={"Authorization": f"Bearer {score}"})
    assert forbidden.status_code == 403 and "needs 'admin'" in forbidden.json()["error"]
    assert client.post("/admin/reload", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics", "/docs.json"):
        assert client.get(open_path).status_code == 200
    assert json.loads(received[0]) == body  # the app reads the body the guard buffered


def test_guard_limits_body_size_and_accepts_json_only(guarded: tuple) -> None:
    client, score, _, _ = guarded
    auth = {"Authorization": f"Bearer {score}"}
    big = client.post("/churn_risk", content=b"x" * 1001, headers={**auth, "Content-Type": "application/json"})
    assert big.status_code == 413 and "1000 bytes" in big.json()["error"]

    def chunks() -> Any:  # no Content-Length: the guard counts while reading
        for _ in range(5):
            yield b"y" * 300

    assert client.post("/churn_risk", content=chunks(), headers=auth).status_code == 413
    for media in ("application/octet-stream", "multipart/form-data; boundary=x", "application/vnd.bentoml+pickle",
                  "text/plain"):
        assert client.post("/churn_risk", content=b"{}", headers={**auth, "Content-Type": media}).status_code == 415
    ok = client.post("/churn_risk", content=b'{"customer_ids": ["C1"]}',
                     headers={**auth, "Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    {},
    {"customer_ids": []},
    {"customer_ids": "C1"},
    {"customer_ids": [1, 2]},
    {"customer_ids": ["C1"] * 1001},
    {"customer_ids": [""]},
    {"customer_ids": ["x" * 129]},
    {"customer_ids": ["bad\nid"]},
    {"customer_ids": ["C1"], "explain": "maybe"},
    {"customer_ids": ["C1"], "surprise": 1},
])
def test_churn_request_rejects_bad_input(payload: dict) -> None:
    with pytest.raises(ValidationError):
        ChurnRiskRequest.model_validate_json(json.dumps(payload))


def test_validation_errors_never_echo_the_input() -> None:
    secret = "ada@example.com"
    with pytest.raises(ValidationError) as info:
        LeadScoreRequest.model_validate_json(json.dumps({"leads": [{"attributes": {"email": secret}}]}))
    assert secret not in str(info.value)


@pytest.mark.parametrize("k", [0, 51, -1, 2.5, "ten"])
def test_k_is_between_1_and_50(k: Any) -> None:
    with pytest.raises(ValidationError):
        NextBestProductsRequest.model_validate({"customer_ids": ["C1"], "k": k})
    assert NextBestProductsRequest.model_validate({"customer_ids": ["C1"], "k": 50}).k == 50


@pytest.mark.parametrize("lead", [
    {},
    {"lead_id": "L1", "attributes": {"source": "web"}},
    {"attributes": {"custom": {"score": "NaN"}}, "lead_id": None, "x": 1},
    {"attributes": {"company_size": "huge"}},
    {"attributes": {"country": "Germany"}},
    {"attributes": {"created_at": "2024-01-01T00:00:00"}},  # no time zone
])
def test_a_lead_is_an_id_or_valid_attributes(lead: dict) -> None:
    with pytest.raises(ValidationError):
        LeadScoreRequest.model_validate({"leads": [lead]})


@pytest.mark.parametrize("raw", ['{"leads": [{"attributes": {"custom": {"score": NaN}}}]}',
                                 '{"leads": [{"attributes": {"custom": {"score": Infinity}}}]}',
                                 '{"leads": [{"attributes": {"custom": {"score": 1e999}}}]}'])
def test_non_finite_attributes_are_rejected(raw: str) -> None:
    with pytest.raises(ValidationError):
        LeadScoreRequest.model_validate_json(raw)


# --- new leads ----------------------------------------------------------------------------

LEAD_FEATURES = ["source", "country", "company_size", "company_size_rank", "job_seniority_rank",
                 "days_since_created", "activities_30d", "days_since_last_activity", "engagement_velocity",
                 "attr_score"]


def test_new_lead_features_say_what_was_defaulted() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    lead = NewLead(source="webinar", company_size="51-200", created_at=now - timedelta(days=3),
                   custom={"score": 12.5})
    row, defaulted, note = new_lead_features(lead, LEAD_FEATURES, now)
    assert note is None
    assert row == {"source": "webinar", "country": None, "company_size": "51-200", "company_size_rank": 2,
                   "job_seniority_rank": None, "days_since_created": pytest.approx(3.0), "activities_30d": 0,
                   "days_since_last_activity": None, "engagement_velocity": 0.0, "attr_score": 12.5}
    assert defaulted == ["country", "job_seniority_rank", "activities_30d", "days_since_last_activity",
                         "engagement_velocity"]


def test_a_custom_attribute_of_the_wrong_kind_is_defaulted_and_named() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    row, defaulted, note = new_lead_features(NewLead(custom={"score": "lots"}), LEAD_FEATURES, now)
    assert row["attr_score"] is None and "attr_score" in defaulted
    assert note == "custom attributes of the wrong kind, defaulted: score (expected a number)"
    _, defaulted, note = new_lead_features(NewLead(custom={"score": 3}), LEAD_FEATURES, now,
                                           categorical=frozenset({"attr_score"}))
    assert "attr_score" in defaulted and note is not None and "score (expected text)" in note


def test_an_unknown_custom_attribute_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"leads\[4\].*no custom attribute 'colour' \(it knows: score\)"):
        new_lead_features(NewLead(custom={"colour": "red"}), LEAD_FEATURES, datetime.now(UTC), index=4)


# --- the champion swap ------------------------------------------------------------------------


class _Registry:
    """Stands in for MlflowClient.get_model_version_by_alias."""

    def __init__(self) -> None:
        self.version: str | None = "1"

    def get_model_version_by_alias(self, name: str, alias: str) -> Any:
        from mlflow.exceptions import MlflowException

        if self.version is None:
            raise MlflowException("no alias")
        return type("MV", (), {"version": self.version})()


def test_refresh_swaps_only_a_loadable_new_champion() -> None:
    registry, loads = _Registry(), []

    def load(version: str) -> Loaded[str]:
        loads.append(version)
        if version == "3":
            raise CrmscoreError("needs features the store does not serve")
        return Loaded("m", version, "champion", f"model v{version}")

    champions = Champions(registry, [Slot("m", load)])
    assert champions.refresh() == ["m"] and champions.get("m").value == "model v1"
    in_flight = champions.get("m")  # what a running request holds
    assert champions.refresh() == [] and loads == ["1"]  # unchanged: nothing reloaded
    registry.version = "2"
    assert champions.refresh() == ["m"] and champions.get("m").version == "2"
    assert in_flight.value == "model v1"  # the request in flight finishes on its version
    registry.version = "3"
    assert champions.refresh() == [] and champions.get("m").version == "2"
    assert "needs features" in champions.slots["m"].error
    registry.version = None  # alias removed: keep serving what we have
    assert champions.refresh() == [] and champions.get("m").version == "2"


def test_no_champion_means_not_ready_with_a_reason() -> None:
    registry = _Registry()
    registry.version = None
    champions = Champions(registry, [Slot("m", lambda v: Loaded("m", v, "champion", v))])
    champions.refresh()
    assert not champions.ready() and "has no @champion" in champions.slots["m"].error


def test_the_poller_picks_up_a_promotion() -> None:
    registry = _Registry()
    champions = Champions(registry, [Slot("m", lambda v: Loaded("m", v, "champion", v))])
    champions.refresh()
    champions.start_polling(0.05)
    try:
        registry.version = "2"
        deadline = time.monotonic() + 5
        while champions.get("m").version != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert champions.get("m").version == "2"
    finally:
        champions.stop()
    assert not any(t.name == "champion-poll" for t in threading.enumerate())
