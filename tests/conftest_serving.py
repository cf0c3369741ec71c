"""A tiny trained workspace for the serving tests (a plugin: ``pytest_plugins`` in the test modules).

Built once per test session — and once for all xdist workers, under a file
lock in their shared temp directory — because it costs tens of seconds: a
synthetic world, features built, applied and materialized (local SQLite), and
champions of all three models. The churn and lead champions are trained by
the real trainer (``train_binary``) on the feature tables with labels drawn
from a known function of the features, which is quicker than the training jobs'
point-in-time retrieval and good enough for serving (it only needs real
boosters over the real feature services). The PII of the customers table is
kept for the log test.

Tests must not change this workspace: one that promotes versions copies the
MLflow store first (``private_registry``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmdata.workspace import Workspace

WORLD = {"customers": 700, "leads": 500, "products": 25, "seed": 11}
REUSE_ENV = "CRMSCORE_TEST_SERVING_WORLD"


@dataclass(frozen=True)
class ServingWorld:
    ws: Workspace
    tracking_uri: str
    customer_ids: list[str]  # in the online store and in churn's population (active subscribers)
    lead_ids: list[str]  # in the online store and open
    inactive_customer_ids: list[str]  # in the online store, no active subscription
    closed_leads: dict[str, str]  # in the online store, converted or lost: lead_id -> status
    pii: list[str]  # every name, email and phone of the customers table

    def env(self) -> dict[str, str]:
        return {
            "CRMSCORE_HOME": str(self.ws.home),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "CRMSCORE_AS_OF": "snapshot",
            "CRMSCORE_RELOAD_SECONDS": "0",
            "CRMSCORE_PROFILE": "local",
            "BENTOML_DO_NOT_TRACK": "true",
            "OPENBLAS_NUM_THREADS": "1",
        }


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _col(frame: pd.DataFrame, name: str, fill: float) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").fillna(fill).to_numpy(dtype=float)


def _train(ws: Workspace, task_key: str, segment: str) -> None:
    from training.frames import model_features
    from training.model import ModelSpec
    from training.tasks import TASKS
    from training.trainer import BinaryTask, train_binary

    task = TASKS[task_key]
    entity, key = task.entity, task.key_column

    frame = pd.read_parquet(ws.feature_tables / f"{entity}.parquet")
    frame = frame[frame["event_timestamp"].isin(sorted(frame["event_timestamp"].unique())[-6:])]
    frame = frame.reset_index(drop=True)
    z = _label_logit(entity, frame)
    frame["label"] = (np.random.default_rng(7).uniform(size=len(frame)) < _sigmoid(z)).astype(int)
    features = model_features(frame, key)
    categorical = [c for c in features if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    spec = ModelSpec(task=task.key, model_name=task.model_name, feature_service=task.feature_service,
                     entity_key=key, features=features, categories={c: [] for c in categorical},
                     label_window_days=task.window_days, mode="subscription" if task_key == "churn" else None)
    binary = BinaryTask(spec=spec, segment_column=segment, grading=task.grades, baseline_name="half the true logit",
                        positive_noun="positives", negative_noun="negatives", min_positives=20,
                        min_negatives=20, extra_params={"min_data_in_leaf": 20})
    train_binary(binary, frame, baseline=_sigmoid(z / 2), oracle=None)


def _label_logit(entity: str, frame: pd.DataFrame) -> np.ndarray:
    if entity == "customer":
        return (-1.5 + 0.004 * _col(frame, "days_since_last_login", 365) - 0.2 * _col(frame, "logins_30d", 0)
                + 0.6 * _col(frame, "tickets_90d", 0))
    return -2.0 + 0.3 * _col(frame, "activities_30d", 0) + 0.4 * _col(frame, "job_seniority_rank", 0)


def build_world(home: Path) -> None:
    """Generate, build, apply, materialize and train into ``home`` (MLflow under home/mlflow)."""
    from crmdata.synth import WorldConfig, generate_world
    from features.build import build_features
    from features.grid import snapshot_grid
    from features.materialize import materialize_latest
    from features.store import apply_repository, feature_store
    from training.nbp import train_nbp

    ws = Workspace(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow/mlflow.db"
    generate_world(WorldConfig(**WORLD), ws.lake)
    build_features(ws.lake, ws.feature_tables, snapshot_grid(ws.lake, periods=8, include_truth=False))
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    materialize_latest(store, ws.feature_tables)
    _train(ws, "churn", "segment")
    _train(ws, "lead", "source")
    train_nbp(ws.lake)


@pytest.fixture(scope="session")
def serving_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingWorld]:
    import polars as pl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    # For a quick inner loop: reuse a world built by an earlier run (never changed by the tests).
    home = Path(os.environ.get(REUSE_ENV) or shared / "serving_world")
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    with open(shared / "serving_world.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first xdist worker builds, the others wait and reuse
        try:
            if not (home / "READY").exists():
                shutil.rmtree(home, ignore_errors=True)
                build_world(home)
                (home / "READY").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved
    ws = Workspace(home)
    customers = pl.read_parquet(ws.lake / "customers.parquet")
    online = pl.read_parquet(ws.feature_tables / "customer.parquet",
                             columns=["customer_id", "event_timestamp", "subscription_active"])
    newest = online.filter(pl.col("event_timestamp") == online["event_timestamp"].max()).sort("customer_id")
    leads = pl.read_parquet(ws.feature_tables / "lead.parquet", columns=["lead_id", "event_timestamp", "lead_status"])
    newest_leads = leads.filter(pl.col("event_timestamp") == leads["event_timestamp"].max()).sort("lead_id")
    pii = [v for c in ("name", "email", "phone") for v in customers[c].drop_nulls().to_list()]
    active = pl.col("subscription_active") == 1
    is_open = pl.col("lead_status") == "open"
    closed = newest_leads.filter(~is_open)
    yield ServingWorld(ws=ws, tracking_uri=f"sqlite:///{home}/mlflow/mlflow.db",
                       customer_ids=newest.filter(active)["customer_id"].to_list(),
                       lead_ids=newest_leads.filter(is_open)["lead_id"].to_list(),
                       inactive_customer_ids=newest.filter(~active)["customer_id"].to_list(),
                       closed_leads=dict(zip(closed["lead_id"], closed["lead_status"], strict=True)), pii=pii)


def private_registry(world: ServingWorld, tmp: Path) -> str:
    """A copy of the world's MLflow store (artifacts stay shared, read-only): promote freely."""
    db = tmp / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(world.ws.home / "mlflow" / "mlflow.db", db)
    return f"sqlite:///{db}"
