"""`crmscore features build | apply | materialize` on a tiny lake, and the CDNOW lake."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from crmdata.workspace import Workspace
from features.catalog import EVENT_TIMESTAMP, table_file
from pipelines.cli import app
from tests.factories import write_lake

MAPPING = Path(__file__).resolve().parents[1] / "examples" / "cdnow" / "mapping.yaml"


@pytest.mark.slow
def test_build_apply_materialize(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    write_lake(ws.lake)
    runner = CliRunner()
    home = ["--home", str(tmp_path)]
    done = runner.invoke(app, [*home, "features", "build", "--as-of", "2024-01-01,2023-06-01"])
    assert done.exit_code == 0, done.output
    assert "2 snapshots" in done.output
    stamps = pl.read_parquet(ws.feature_tables / table_file("customer"))[EVENT_TIMESTAMP].unique().sort()
    assert stamps.to_list() == [datetime(2023, 6, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)]

    done = runner.invoke(app, [*home, "features", "build", "--every", "7d", "--periods", "4"])
    assert done.exit_code == 0, done.output
    assert "4 snapshots" in done.output
    done = runner.invoke(app, [*home, "features", "apply"])
    assert done.exit_code == 0, done.output
    assert "churn_v1" in done.output and (ws.feast / "registry.db").exists()
    assert (ws.feast / "feature_store.yaml").exists()
    done = runner.invoke(app, [*home, "features", "materialize", "--profile", "local"])
    assert done.exit_code == 0, done.output
    assert "customer_features: 3" in done.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["--home", str(tmp_path), "features", "apply"])
    assert done.exit_code == 1
    assert "crmscore features build" in done.output
    done = runner.invoke(app, ["--home", str(tmp_path), "features", "apply", "--profile", "cloud"])
    assert done.exit_code == 1 and "expected local or redis" in done.output
    write_lake(Workspace(tmp_path).lake)
    done = runner.invoke(app, ["--home", str(tmp_path), "features", "build", "--every", "weekly"])
    assert done.exit_code == 1 and "--every" in done.output


@pytest.mark.slow
def test_cdnow_lake_builds_what_it_can(tmp_path: Path) -> None:
    if importlib.util.find_spec("lifetimes") is None or not MAPPING.exists():
        pytest.skip("needs the lifetimes package (dev extra) and examples/cdnow/mapping.yaml")
    from crmdata.importer import import_lake
    from features.build import build_features
    from features.grid import snapshot_grid
    from features.labels import churn_labels
    from features.store import apply_repository, feature_store
    from features.training import training_frame

    ws = Workspace(tmp_path)
    import_lake(MAPPING, ws.lake)
    grid = snapshot_grid(ws.lake, every=__import__("datetime").timedelta(days=28), periods=12)
    summary = build_features(ws.lake, ws.feature_tables, grid)
    customer = summary.entities["customer"]
    assert customer.entities == 23_570
    assert {"orders_90d", "revenue_365d", "days_since_last_order", "tenure_days"} <= set(customer.features)
    assert "last_nps" in customer.unavailable and "subscription_plan" in customer.unavailable
    assert summary.entities["product"].rows == 0 and summary.entities["lead"].rows == 0
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    labels = churn_labels(ws.lake, grid, window_days=90)  # transactional: no subscriptions
    assert labels["label"].n_unique() == 2
    sample = labels.filter(pl.col(EVENT_TIMESTAMP) == labels[EVENT_TIMESTAMP].max()).head(500)
    frame = training_frame(store, "churn_v1", sample)
    assert len(frame) == 500 and frame["orders_total"].notna().all()
    assert (frame["orders_total"] >= 1).all()  # active in the look-back means an order before
