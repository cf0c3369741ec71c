"""GET /report: the latest page from the workspace, or a 404 with the service's error body."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from crmdata.workspace import Workspace
from pipelines.report.build import atomic_write
from serving.report import CONTENT_SECURITY_POLICY, NO_REPORT, ReportEndpoint, latest_html


async def inner(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """Stands for the rest of the service: says which path reached it."""
    body = json.dumps({"inner": scope["path"], "method": scope["method"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def client(ws: Workspace) -> TestClient:
    return TestClient(ReportEndpoint(inner, workspace=ws))


def test_no_report_yet_is_a_404_with_the_error_body(ws: Workspace) -> None:
    response = client(ws).get("/report")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": NO_REPORT, "detail": None}


def test_serves_the_latest_page_and_a_new_one_without_restart(ws: Workspace) -> None:
    http = client(ws)
    atomic_write(latest_html(ws), "<!doctype html><title>first</title>")
    response = http.get("/report")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.text == "<!doctype html><title>first</title>"
    atomic_write(latest_html(ws), "<!doctype html><title>second</title>")
    assert http.get("/report").text == "<!doctype html><title>second</title>"
    head = http.head("/report")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len("<!doctype html><title>second</title>")


def test_other_paths_and_methods_pass_through(ws: Workspace) -> None:
    http = client(ws)
    assert http.get("/reports").json() == {"inner": "/reports", "method": "GET"}
    assert http.post("/report", json={}).json() == {"inner": "/report", "method": "POST"}
    assert http.post("/churn_risk", json={}).json() == {"inner": "/churn_risk", "method": "POST"}


def test_workspace_from_the_environment(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSCORE_HOME", str(ws.home))
    atomic_write(latest_html(ws), "<p>from env</p>")
    assert TestClient(ReportEndpoint(inner)).get("/report").text == "<p>from env</p>"
