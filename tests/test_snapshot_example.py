"""Issue 12, worked example: a labelled snapshot export imported with examples/snapshot/mapping.yaml,
trained on its churn_labels (one date: a cross-sectional model) and scored end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from crmdata.workspace import Workspace

EXAMPLE = Path(__file__).parents[1] / "examples" / "snapshot" / "mapping.yaml"


@pytest.mark.slow
def test_the_snapshot_example_imports_trains_and_scores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from crmdata.importer import import_lake
    from crmdata.synth import WorldConfig, generate_world
    from crmdata.synth.snapshot import export_snapshot
    from crmdata.validate import validate_lake
    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions
    from pipelines.train import train_task
    from training.tasks import get_task

    world = tmp_path / "world"
    generate_world(WorldConfig(customers=3000, leads=0, products=20, seed=3), world)
    export = export_snapshot(world, tmp_path / "export" / "telco.csv")
    csv = pl.read_csv(export.file)
    assert csv.height == export.rows and csv["customer_id"].n_unique() == csv.height
    assert csv["churned"].unique().sort().to_list() == ["No", "Yes"]
    assert (csv["churned"] == "Yes").mean() == pytest.approx(export.churn_rate)
    assert pl.read_csv(export.truth_file).height == csv.height and "p_churn" not in csv.columns

    shutil.copy(EXAMPLE, export.file.parent / "mapping.yaml")
    ws = Workspace(tmp_path / "home")
    monkeypatch.setenv("CRMSCORE_HOME", str(ws.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws.home}/mlflow/mlflow.db")
    summary = import_lake(export.file.parent / "mapping.yaml", ws.lake)
    assert summary.rows == {"customers": csv.height, "subscriptions": csv.height, "churn_labels": csv.height}
    assert [p for p in validate_lake(ws.lake) if p.severity == "error"] == []
    labels = pl.read_parquet(ws.lake / "churn_labels.parquet")
    assert int(labels["churned"].sum()) == int((csv["churned"] == "Yes").sum())

    # 3,000 customers leave ~560 active at the export: fewer churners than the CLI's 200 minimum.
    result = train_task(ws, get_task("churn"), min_positives=30)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["labels"] == "churn_labels"
    assert run.data.tags["split"] == "entity" and run.data.tags["cross_sectional"] == "true"
    assert sum(int(run.data.params[f"{f}_rows"]) for f in ("train", "valid", "holdout")) == csv.height
    card = Path(client.download_artifacts(result.run_id, "model_card.md")).read_text()
    assert "**a cross-sectional model, not a forecast**" in card
    assert result.promoted and result.metrics["overall"]["roc_auc"] > 0.6

    scored = score(ws, "churn", options=ScoreOptions(reasons="none"))
    assert f"{scored.as_of:%Y-%m-%d}" == csv["snapshot_date"][0]
    assert scored.rows == scored.entities == csv.height
    assert scored.drift is not None and scored.drift["reference_rows"] == int(run.data.params["holdout_rows"])
