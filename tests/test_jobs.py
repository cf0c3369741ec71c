"""The churn and lead jobs end to end on a tiny synthetic world, into a temporary MLflow store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from pipelines.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    from crmdata.synth import WorldConfig, generate_world

    home = tmp_path_factory.mktemp("jobs")
    mp = pytest.MonkeyPatch()
    mp.setenv("CRMSCORE_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow/mlflow.db")
    ws = Workspace(home)
    generate_world(WorldConfig(customers=4000, leads=3000, products=60, seed=3), ws.lake)
    yield ws
    mp.undo()


def test_train_churn_and_lead_through_the_cli(world: Workspace) -> None:
    runner = CliRunner()
    # No feature build or apply first: the job builds the snapshots it needs and registers the repo.
    for target, model, service in (("churn", "crm-churn", "churn_v1"), ("lead", "crm-lead-scoring",
                                                                          "lead_scoring_v1")):
        result = runner.invoke(app, ["train", target, "--json"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout[result.stdout.index("{"):])
        assert set(out) == {"model", "version", "run_id", "alias", "metrics", "baseline", "oracle",
                            "promoted", "reason"}
        assert out["model"] == model and out["promoted"] and out["alias"] == "champion"
        # Model, baseline and oracle are measured on the same holdout rows.
        rows = {out[k]["overall"]["rows"] for k in ("metrics", "baseline", "oracle")}
        assert len(rows) == 1
        assert 0.6 < out["metrics"]["overall"]["roc_auc"] <= 1.0
        assert 0.6 < out["oracle"]["overall"]["roc_auc"] <= 1.0
        run = MlflowClient().get_run(out["run_id"])
        assert run.data.tags["feature_service"] == service

    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert {(r["model"], tuple(r["aliases"])) for r in listed} == {
        ("crm-churn", ("challenger", "champion")), ("crm-lead-scoring", ("challenger", "champion"))}


def test_library_warnings_stay_out_of_the_cli_output(world: Workspace, tmp_path: Path) -> None:
    """Training lead scoring makes ibis (under Feast), SQLAlchemy (under MLflow) and shap
    (under matplotlib) warn about their own deprecations; a person running the command
    sees crmscore's log lines only (``--debug`` shows the rest)."""
    env = {**os.environ, "CRMSCORE_HOME": str(world.home),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}  # its own registry: no champion to beat
    env.pop("MLFLOW_LOGGING_LEVEL", None)  # as in a fresh shell (CliRunner tests set it in this process)
    crmscore = str(Path(sys.executable).with_name("crmscore"))
    done = subprocess.run([crmscore, "train", "lead"], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on the" in done.stderr  # crmscore's own INFO lines still show
    warned = [line for line in done.stderr.splitlines() if re.search(r"\w*Warning: ", line)]
    assert not warned, "\n".join(warned)
    assert " INFO mlflow." not in done.stderr  # MLflow's own INFO log, e.g. "Creating initial MLflow database tables"


def test_transactional_churn_has_no_oracle(world: Workspace) -> None:
    from training.churn import train_churn

    result = train_churn(world, mode="transactional", window_days=60)
    assert result.oracle is None
    assert result.metrics["overall"]["rows"] > 0


def test_minimum_data_error_names_what_is_missing(world: Workspace) -> None:
    from training.lead import train_lead

    with pytest.raises(CrmscoreError, match=r"need ≥ 100000 converted leads in the training cutoffs, found \d+"):
        train_lead(world, min_positives=100_000)


def test_lead_scoring_without_leads_is_a_clear_error(tmp_path: Path) -> None:
    from tests.factories import tiny_tables, write_lake
    from training.lead import train_lead

    ws = Workspace(tmp_path)
    write_lake(ws.lake, {k: v for k, v in tiny_tables().items() if k in ("customers", "orders")})
    with pytest.raises(CrmscoreError, match="lead scoring needs the leads table"):
        train_lead(ws)
