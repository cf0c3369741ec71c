"""Feast's own UI on a crmscore workspace: `crmscore features ui`, and `feast ui` through the
resolved feature_store.yaml that every apply (the pipeline's included) writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from crmdata.workspace import Workspace
from pipelines.cli import app
from tests.conftest import FeatureWorkspace

BIN = Path(sys.executable).parent
FEATURES_DIR = Path(__file__).resolve().parents[1] / "features"
#: Feast imports itself and its UI app before it listens: ~7 s on the 2-core CI machine.
STARTUP_SECONDS = 120
OUR_VIEWS = {"customer_features", "lead_features", "product_features"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ui_server(command: list[str], port: int, log: Path, cwd: Path | None = None) -> Iterator[str]:
    """Start a UI server, wait (bounded) until its page answers, yield its URL, stop it."""
    url = f"http://127.0.0.1:{port}"
    # Without CRMSCORE_HOME (`make test` exports one): the command line alone names the workspace.
    env = {k: v for k, v in os.environ.items() if k != "CRMSCORE_HOME"}
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert proc.poll() is None, f"the UI exited with {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer in {STARTUP_SECONDS}s: {log.read_text()[-2000:]}"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def registered_views(url: str) -> set[str]:
    """The feature views of project crmscore, through the UI's registry API (what its pages read)."""
    answer = httpx.get(f"{url}/api/v1/feature_views", params={"project": "crmscore"}, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    return {view["spec"]["name"] for view in answer.json()["featureViews"]}


@pytest.mark.slow
def test_crmscore_features_ui_serves_our_views(feature_workspace: FeatureWorkspace, tmp_path: Path) -> None:
    port = free_port()
    command = [str(BIN / "crmscore"), "--home", str(feature_workspace.ws.home), "features", "ui",
               "--port", str(port)]
    log = tmp_path / "ui.log"
    with ui_server(command, port, log) as url:
        page = httpx.get(url + "/", timeout=10)
        assert "<title>Feast" in page.text
        assert OUR_VIEWS <= registered_views(url)
        projects = httpx.get(url + "/projects-list.json", timeout=10).json()["projects"]
        assert [p["id"] for p in projects] == ["crmscore"]
    output = log.read_text()
    assert f"Feast UI for {feature_workspace.ws.home} on {url}" in output
    assert "Warning" not in output, output  # library notices stay out of normal output


@pytest.mark.slow
def test_feast_ui_finds_the_workspace_after_the_pipeline_applied(
    feature_workspace: FeatureWorkspace, tmp_path: Path
) -> None:
    from pipelines.pipeline import Context, Source, _apply

    ws = feature_workspace.ws
    config = ws.feast / "feature_store.yaml"
    config.unlink(missing_ok=True)
    detail = _apply(Context(ws=ws, source=Source(lake=ws.lake), profile="local"))  # what `pipeline run` runs
    assert config.exists() and str(config) in detail
    port = free_port()
    # From features/, where a user runs Feast's CLI: -f alone finds the workspace.
    command = [str(BIN / "feast"), "-f", str(config), "ui", "-h", "127.0.0.1", "-p", str(port)]
    with ui_server(command, port, tmp_path / "feast-ui.log", cwd=FEATURES_DIR) as url:
        assert OUR_VIEWS <= registered_views(url)


def test_ui_on_an_empty_workspace_is_a_one_line_error(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["--home", str(tmp_path), "features", "ui", "--port", str(free_port())])
    assert done.exit_code == 1
    assert "no feature views registered" in done.output and "crmscore features apply" in done.output
    assert not (Workspace(tmp_path).feast / "registry.db").exists()  # nothing created on the way
