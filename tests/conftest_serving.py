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

import contextlib
import fcntl
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _train_value(ws: Workspace) -> None:
    """A customer-value champion over the real value service: tweedie and quantile boosters
    fitted on the newest snapshot, spend drawn from a known function of the features (as for
    churn and leads, serving needs real boosters, not a good model), registered and promoted."""
    import lightgbm as lgb
    import mlflow
    from mlflow import MlflowClient

    from features.catalog import VALUE_TABLE, table_file
    from training.encoding import Encoder
    from training.model import ModelSpec, fit_categories
    from training.registry import configure_mlflow, ensure_experiment, promote
    from training.tasks import VALUE
    from training.value.scorer import save_value_files
    from training.value.spec import TierThresholds, ValueSettings, ValueSpec
    from training.value.tiers import fit_thresholds

    frames = []
    for table in ("customer", VALUE_TABLE):
        frame = pd.read_parquet(ws.feature_tables / table_file(table))
        frames.append(frame[frame["event_timestamp"] == frame["event_timestamp"].max()].drop(columns="event_timestamp"))
    frame = frames[0].merge(frames[1], on=VALUE.key_column).reset_index(drop=True)
    features = ["rfm_frequency", "rfm_monetary", "peer_expected_spend", "value_spend_365", "value_tickets_365",
                "value_complaints_365", "rfm_segment", "logins_30d", "tickets_90d"]
    rng = np.random.default_rng(5)
    spend = _col(frame, "value_spend_365", 0)
    y = np.where(rng.uniform(size=len(frame)) < 0.6, 0.9 * spend + rng.gamma(2.0, 15.0, len(frame)), 0.0)
    spec = ModelSpec(task=VALUE.key, model_name=VALUE.model_name, feature_service=VALUE.feature_service,
                     entity_key=VALUE.key_column, features=features,
                     categories=fit_categories(frame, ["rfm_segment"]), label_window_days=VALUE.window_days)
    x = Encoder.of(spec).frame(frame)
    base = {"verbose": -1, "num_threads": 1, "min_data_in_leaf": 10, "seed": 1, "deterministic": True}
    boosters = {role: lgb.train({**base, **params}, lgb.Dataset(x, y), 25) for role, params in (
        ("clv", {"objective": "tweedie"}), ("low", {"objective": "quantile", "alpha": 0.1}),
        ("high", {"objective": "quantile", "alpha": 0.9}))}
    settings = ValueSettings()
    value = ValueSpec(model=spec, settings=settings, kind="tweedie", conformal=2.5,
                      thresholds=TierThresholds(a_threshold=0.0, median_clv=0.0))
    value.thresholds = fit_thresholds(boosters["clv"].predict(x), settings)
    client: MlflowClient = configure_mlflow()
    files = ws.home / "value_model"
    save_value_files(files, value, boosters)
    with mlflow.start_run(experiment_id=ensure_experiment(client, VALUE.model_name)) as run:
        mlflow.log_artifacts(str(files), "model")
    client.create_registered_model(VALUE.model_name)
    version = client.create_model_version(VALUE.model_name, source=f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    promote(client, VALUE.model_name, str(version.version), "serving tests: a hand-trained value model")


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
    _train_value(ws)


@pytest.fixture(scope="session")
def serving_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingWorld]:
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
    yield load_world(home)


def load_world(home: Path) -> ServingWorld:
    """The ids and PII of a world ``build_world`` made (the bench reuses both)."""
    import polars as pl

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
    return ServingWorld(ws=ws, tracking_uri=f"sqlite:///{home}/mlflow/mlflow.db",
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


# --- a real server on the Redis profile (tests/test_reliability.py, bench/bench_reliability.py) ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A throw-away ``redis-server`` on a free port of 127.0.0.1. Faults go to this process
    only (never the shared :6379). No AOF and no periodic snapshot: a restart comes back
    empty, unless it was given a ``directory`` and stopped with ``stop(save=True)``, which
    writes ``dump.rdb`` there for the restart to load."""

    def __init__(self, port: int | None = None, directory: Path | None = None) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persist = ["--dir", str(self.directory), "--dbfilename", "dump.rdb"] if self.directory else []
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", *persist,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, save: bool = True) -> None:
        """Stop the server; with ``save`` (and a ``directory``) its data come back on ``start``."""
        if save and self.proc is not None and self.directory is not None:
            import redis

            redis.Redis(port=self.port).save()
        self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused one dies too
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None


class LiveServer:
    """``crmscore serve --profile redis`` on a free port over a world: Redis is a
    ``PrivateRedis``, Feast's SQL registry a SQLite file of its own (so the shared
    PostgreSQL is not touched), keys in a private file. The world is only read."""

    def __init__(self, world: ServingWorld, tmp: Path, log_level: str = "INFO",
                 env: dict[str, str] | None = None) -> None:
        self.world, self.tmp = world, tmp
        self.redis = PrivateRedis()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        self.registry_url = f"sqlite:///{tmp / 'feast_registry.db'}"
        self.keys_file = tmp / "api_keys.json"
        self.log_level = log_level
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.score_key = self.admin_key = ""

    def store(self) -> Any:
        from features.store import feature_store

        return feature_store(self.world.ws, "redis", redis_url=f"redis://127.0.0.1:{self.redis.port}/0",
                             registry_url=self.registry_url)

    def materialize(self) -> None:
        from features.materialize import materialize_latest

        materialize_latest(self.store(), self.world.ws.feature_tables)

    def start(self, ready_seconds: float = 240) -> None:
        from features.store import apply_repository
        from serving.auth import create_key

        self.redis.start()
        store = self.store()
        apply_repository(store, self.world.ws.feature_tables, "redis")
        self.materialize()
        self.score_key, _ = create_key(self.keys_file, "score")
        self.admin_key, _ = create_key(self.keys_file, "admin")
        env = {**os.environ, **self.world.env(), "CRMSCORE_PROFILE": "redis",
               "CRMSCORE_REDIS_URL": f"redis://127.0.0.1:{self.redis.port}/0",
               "CRMSCORE_REGISTRY_URL": self.registry_url, "CRMSCORE_KEYS_FILE": str(self.keys_file),
               "CRMSCORE_LOG_LEVEL": self.log_level, "TMPDIR": str(self.tmp), **self.extra_env}
        repo = Path(__file__).resolve().parent.parent
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "crmscore"), "serve", "--profile", "redis", "--port",
                 str(self.port), "--as-of", "snapshot", "--reload-seconds", "0"],
                cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crmscore serve exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if self.readyz()[0] == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"not ready after {ready_seconds}s:\n{self.log_text()[-3000:]}")

    def readyz(self, timeout: float = 2.0) -> tuple[int, Any]:
        import http.client
        import json

        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            conn.request("GET", "/readyz")
            response = conn.getresponse()
            body = response.read()
            conn.close()
            return response.status, json.loads(body or b"null")
        except (OSError, ValueError):
            return 0, None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        self.redis.kill()


# --- the OpenAPI document fuzzed against a live server (schemathesis) ---------------------


@dataclass
class FuzzReport:
    cases: dict[str, int]  # operation -> cases sent
    statuses: dict[int, int]  # HTTP status -> count
    failures: list[str]  # check failures and server errors, first lines only

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


def fuzz(url: str, key: str, admin_key: str, per_mode: int, seed: int | None = 0, deadline: float | None = None) -> FuzzReport:
    """Every operation of ``url``'s ``/docs.json``, ``per_mode`` valid and ``per_mode``
    invalid requests each (schemathesis' generators through Hypothesis, no shrinking),
    every answer checked: not a 5xx, a documented status and content type, a body that
    matches the documented schema. ``seed`` set makes the cases the same every run (CI);
    ``None`` draws new ones (the bench). No new case is sent after ``deadline``
    (``time.monotonic()``), if given."""
    import requests
    import schemathesis
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/docs.json", timeout=30)
    report = FuzzReport(cases={}, statuses={}, failures=[])
    with requests.Session() as session:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                operation = result.ok()
                own = admin_key if operation.path.startswith("/admin/") else key
                _fuzz_operation(operation, mode, url, own, session, per_mode, seed, deadline, report)
    return report


def _fuzz_operation(operation: Any, mode: Any, url: str, key: str, session: Any, per_mode: int,
                    seed: int | None, deadline: float | None, report: FuzzReport) -> None:
    import hypothesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import Failure, FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    label = f"{operation.method.upper()} {operation.path}"
    settings = hypothesis.settings(
        max_examples=per_mode, deadline=None, database=None, derandomize=seed is not None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck), verbosity=hypothesis.Verbosity.quiet)

    @settings
    @hypothesis.given(operation.as_strategy(generation_mode=mode, headers={"Authorization": f"Bearer {key}"}))
    def run(case: Any) -> None:
        if deadline is not None and time.monotonic() > deadline:
            return
        response = case.call(base_url=url, session=session, timeout=15)
        report.cases[label] = report.cases.get(label, 0) + 1
        report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=checks)
        except (Failure, FailureGroup) as exc:  # keep the first line, go on
            if len(report.failures) < 50:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                report.failures.append(f"{label} ({mode.value}) {response.status_code}: {first}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # no invalid input exists (a GET without parameters)
        pass


# --- concurrent clients (tests/test_reliability.py, bench/bench_reliability.py) ---------


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic() when sent
    seconds: float  # until the whole answer was read (or the connection failed)
    path: str
    status: int  # 0: no HTTP answer (connection refused, reset or timed out)
    items: tuple[str, ...]  # the per-item statuses of a 200
    error: str = ""  # otherwise, the start of the body (or the exception)


def hammer(url: str, key: str, plan: Callable[[random.Random], tuple[str, dict[str, Any]]], clients: int,
           seconds: float, stop: threading.Event | None = None, rate: float | None = None,
           timeout: float = 15.0) -> list[Call]:
    """``clients`` threads, each with its own keep-alive connection, POST ``plan(rng)`` in a
    loop for ``seconds`` (or until ``stop``); with ``rate``, all together send about that many
    requests a second. Bounded in time; returns every call."""
    import http.client
    import json

    host, port = url.removeprefix("http://").split(":")
    calls: list[Call] = []
    ends = time.monotonic() + seconds
    stop = stop or threading.Event()
    interval = clients / rate if rate else 0.0

    def client(n: int) -> None:
        rng = random.Random(n)
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        next_at = time.monotonic() + rng.uniform(0, interval)
        while not stop.is_set() and time.monotonic() < ends:
            if interval:
                pause = next_at - time.monotonic()
                if pause > 0 and stop.wait(pause):
                    break
                next_at += interval
            path, body = plan(rng)
            started = time.monotonic()
            status, items, error = 0, (), ""
            try:
                conn.request("POST", path, json.dumps(body), headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                if status == 200:
                    items = tuple(r["status"] for r in json.loads(data)["results"])
                else:
                    error = data[:200].decode(errors="replace")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                error = repr(exc)[:200]
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
            calls.append(Call(started, time.monotonic() - started, path, status, items, error))
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + timeout + 30)
    return calls


def mixed_plan(world: ServingWorld, big: int = 100) -> Callable[[random.Random], tuple[str, dict[str, Any]]]:
    """Half batch-1, half batch-``big`` calls over the three questions, by stored id only
    (so every ``ok`` must have come from the store)."""
    customers, leads = world.customer_ids, world.lead_ids

    def plan(rng: random.Random) -> tuple[str, dict[str, Any]]:
        n = 1 if rng.random() < 0.5 else big
        which = rng.randrange(3)
        if which == 0:
            return "/churn_risk", {"customer_ids": rng.choices(customers, k=n), "explain": n == 1}
        if which == 1:
            return "/next_best_products", {"customer_ids": rng.choices(customers, k=n), "k": 5}
        return "/lead_score", {"leads": [{"lead_id": i} for i in rng.choices(leads, k=n)], "explain": False}

    return plan


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
