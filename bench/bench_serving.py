"""Serving latency and throughput against a bare BentoML echo endpoint, side by side.

    .venv/bin/python bench/bench_serving.py [--customers 4000] [--seconds 60] [--redis] [--write]

What runs: a synthetic world trained end to end by the real jobs (reused on the
next run), then two servers on 127.0.0.1 — ``crmscore serve`` (API keys, Feast
online store, champions) and ``Echo`` below (the same request schema, no
guard, no model: what BentoML alone costs) — and the same client against both,
interleaved in rounds so machine load hits both alike:

* ``/churn_risk`` batch 1, features from the online store, explain false and
  true (goals: p50 and p99 ≤ 1.8× echo; explain: p99 ≤ 3× echo);
* batch 100 (goals: p99 ≤ 20 ms; explain: p99 ≤ 40 ms);
* concurrency 32 for ``--seconds`` each (goal: 0 errors), rps and p99 against echo;
* ``/customer_value`` batch 1, explain false and true (its goal: p50 and p99 ≤ 2× echo;
  explain: p99 ≤ 3× echo), against the echo's route of the same schema. ``--value-only`` runs the batch-1
  rows of both endpoints and nothing else.

``--redis`` repeats it with the Redis profile: a private ``redis-server`` on a free port
(never the shared one's data) and the Feast SQL registry in a SQLite file of the
workspace, both removed at the end. Load goes to 127.0.0.1 only, bounded in requests
and time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from serving.schemas import ChurnRiskRequest, CustomerValueRequest

log = logging.getLogger("bench.serving")
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: The goals (issue #16): batch 1 against the echo, batch 100 in milliseconds.
BATCH1_RATIO = 1.8
VALUE_BATCH1_RATIO = 2.0  # customer value's own goal (issue #16 set churn's)
BATCH100_P99_MS = 20.0
BATCH100_EXPLAIN_P99_MS = 40.0


@bentoml.service(name="echo", traffic={"timeout": 30}, threads=4)
class Echo:
    """The baseline: BentoML parses the same request and sends it back."""

    @bentoml.api(route="/churn_risk")
    def churn_risk(self, request: ChurnRiskRequest, /) -> ChurnRiskRequest:
        return request

    @bentoml.api(route="/customer_value")
    def customer_value(self, request: CustomerValueRequest, /) -> CustomerValueRequest:
        return request


# --- the world ----------------------------------------------------------------------------


def build_world(home: Path, customers: int) -> None:
    """Generate, train the champions with the real jobs, apply and materialize (local)."""
    from crmdata.synth import WorldConfig, generate_world
    from crmdata.workspace import Workspace
    from features.build import build_features
    from features.grid import snapshot_grid
    from features.materialize import materialize_latest
    from features.store import apply_repository, feature_store
    from training.churn import train_churn
    from training.lead import train_lead
    from training.nbp import train_nbp

    ws = Workspace(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow/mlflow.db"
    generate_world(WorldConfig(customers=customers, leads=customers // 2, products=100, seed=1), ws.lake)
    build_features(ws.lake, ws.feature_tables, snapshot_grid(ws.lake))
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    for train in (lambda: train_churn(ws), lambda: train_lead(ws), lambda: train_nbp(ws.lake)):
        result = train()
        log.info("%s v%s: %s", result.model, result.version, result.reason)
    materialize_latest(store, ws.feature_tables)
    (home / "READY").touch()


def ensure_value_champion(home: Path) -> None:
    """Train customer value with the real job if the world has no champion of it (a world built
    before the value model existed gets one without being rebuilt)."""
    from crmdata.workspace import Workspace
    from training.registry import configure_mlflow, version_by_alias
    from training.tasks import VALUE

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow/mlflow.db"
    if version_by_alias(configure_mlflow(), VALUE.model_name, "champion") is not None:
        return
    result = VALUE.train_function()(Workspace(home))
    log.info("%s v%s: %s", result.model, result.version, result.reason)


# --- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(args: list[str], env: dict[str, str], log_path: Path, timeout: float = 300) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [a.replace("{port}", str(port)) for a in args]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: {log_path.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout}s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# --- the client -------------------------------------------------------------------------------


@dataclass
class Samples:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, round(q / 100 * (len(data) - 1)))] if data else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else float("nan")


class Client:
    """One keep-alive connection; http.client keeps the client's own cost small."""

    def __init__(self, url: str, key: str | None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def post(self, path: str, body: bytes) -> int:
        self.conn.request("POST", path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        return response.status


def run_sequential(url: str, key: str | None, bodies: Callable[[int], bytes], n: int, into: Samples,
                   path: str = "/churn_risk") -> None:
    client = Client(url, key)
    for i in range(n):
        body = bodies(i)
        started = time.perf_counter()
        try:
            ok = client.post(path, body) == 200
        except OSError:
            ok = False
            client = Client(url, key)
        into.latencies_ms.append((time.perf_counter() - started) * 1000)
        into.errors += not ok


def run_concurrent(url: str, key: str | None, bodies: Callable[[int], bytes], concurrency: int,
                   seconds: float, max_requests: int) -> Samples:
    out = Samples()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = iter(range(max_requests))

    def worker() -> None:
        mine = Samples()
        run_until(url, key, bodies, deadline, counter, mine)
        with lock:
            out.latencies_ms += mine.latencies_ms
            out.errors += mine.errors

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = time.monotonic() - started
    return out


def run_until(url: str, key: str | None, bodies: Callable[[int], bytes], deadline: float, counter: Iterator[int],
              into: Samples) -> None:
    client = Client(url, key)
    while time.monotonic() < deadline:
        i = next(counter, None)
        if i is None:
            return
        started = time.perf_counter()
        try:
            ok = client.post("/churn_risk", bodies(i)) == 200
        except OSError:
            ok = False
            client = Client(url, key)
        into.latencies_ms.append((time.perf_counter() - started) * 1000)
        into.errors += not ok


def side_by_side(target: tuple[str, str], echo: str, bodies: Callable[[int], bytes], rounds: int,
                 per_round: int, path: str = "/churn_risk") -> tuple[Samples, Samples]:
    """Interleave rounds of the target and the echo, after a warm-up of each."""
    url, key = target
    t, e = Samples(), Samples()
    run_sequential(url, key, bodies, 100, Samples(), path)
    run_sequential(echo, None, bodies, 100, Samples(), path)
    for _ in range(rounds):
        run_sequential(url, key, bodies, per_round, t, path)
        run_sequential(echo, None, bodies, per_round, e, path)
    return t, e


# --- the run ------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    measured: str
    goal: str
    met: bool | None


def scenarios(target: tuple[str, str], echo: str, ids: list[str], seconds: float, label: str,
              value_only: bool = False) -> list[Row]:
    def batch(size: int, explain: bool) -> Callable[[int], bytes]:
        def body(i: int) -> bytes:
            start = (i * size) % max(1, len(ids) - size)
            return json.dumps({"customer_ids": ids[start:start + size], "explain": explain}).encode()

        return body

    rows = []
    for path in ("/churn_risk", "/customer_value"):
        for explain in (False, True):
            t, e = side_by_side(target, echo, batch(1, explain), rounds=5, per_round=300, path=path)
            p50, p99 = t.pct(50) / e.pct(50), t.pct(99) / e.pct(99)
            ratio = BATCH1_RATIO if path == "/churn_risk" else VALUE_BATCH1_RATIO
            goal = "p99 ≤ 3× echo" if explain else f"p50 and p99 ≤ {ratio:g}× echo"
            met = p99 <= 3 if explain else (p50 <= ratio and p99 <= ratio)
            rows.append(Row(f"{label}: {path} batch 1, explain={str(explain).lower()}",
                            f"p50 {t.pct(50):.2f} ms / p99 {t.pct(99):.2f} ms vs echo {e.pct(50):.2f} / "
                            f"{e.pct(99):.2f} ms = **{p50:.2f}× / {p99:.2f}×** ({len(t.latencies_ms)} requests "
                            f"each, {t.errors} errors)", goal, met and t.errors == 0))
    if value_only:
        return rows
    for explain in (False, True):
        t, e = side_by_side(target, echo, batch(100, explain), rounds=4, per_round=100)
        limit = BATCH100_EXPLAIN_P99_MS if explain else BATCH100_P99_MS
        rows.append(Row(f"{label}: /churn_risk batch 100, explain={str(explain).lower()}",
                        f"p50 {t.pct(50):.1f} ms / **p99 {t.pct(99):.1f} ms** (echo {e.pct(50):.1f} / "
                        f"{e.pct(99):.1f} ms; {len(t.latencies_ms)} requests, {t.errors} errors)",
                        f"p99 ≤ {limit:g} ms", t.pct(99) <= limit and t.errors == 0))
    body = batch(1, False)
    url, key = target
    t = run_concurrent(url, key, body, 32, seconds, max_requests=200_000)
    e = run_concurrent(echo, None, body, 32, seconds, max_requests=200_000)
    rows.append(Row(f"{label}: concurrency 32 × {seconds:.0f} s, batch 1, explain=false",
                    f"**{t.rps:.0f} rps**, p50 {t.pct(50):.1f} / p99 {t.pct(99):.1f} ms, **{t.errors} errors** "
                    f"(echo: {e.rps:.0f} rps, p50 {e.pct(50):.1f} / p99 {e.pct(99):.1f} ms, {e.errors} errors) = "
                    f"{t.rps / e.rps:.2f}× echo rps", "0 errors", t.errors == 0))
    return rows


def stages(home: Path, ids: list[str], profile: str, extra: dict[str, str], repeats: int = 200) -> str:
    """Where a ``/churn_risk`` call goes, in process: each stage timed around the function
    the service calls, median over ``repeats`` calls per batch size (2 ms apart, as a
    server sees them), for batch 1 and 100 with and without reasons."""
    import statistics

    from serving.auth import hash_key
    from serving.predictor import Predictor, ServingSettings, _why_not
    from serving.schemas import ChurnRiskRequest
    from training.tasks import CHURN

    os.environ.update({"CRMSCORE_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
                       "CRMSCORE_AS_OF": "snapshot", "CRMSCORE_SERVE_MODELS": "churn", "CRMSCORE_PROFILE": profile,
                       # Timings, not the deadline: a loaded machine must not turn a slow read into an error.
                       "CRMSCORE_STORE_DEADLINE_SECONDS": "5", **extra})
    predictor = Predictor(ServingSettings.from_env())
    bundle = predictor.champions.get(CHURN.model_name).value  # type: ignore[union-attr]
    scorer = bundle.scorer
    lines = ["| stage | batch 1 | batch 100 |", "|---|---|---|"]
    table: dict[str, dict[int, float]] = {}
    for size in (1, 100):
        times: dict[str, list[float]] = {}

        def timed(name: str, call: Callable[[], object], times: dict[str, list[float]] = times) -> object:
            started = time.perf_counter()
            out = call()
            times.setdefault(name, []).append((time.perf_counter() - started) * 1000)
            return out

        for i in range(repeats):
            start = (i * size) % max(1, len(ids) - size)
            body = json.dumps({"customer_ids": ids[start:start + size], "explain": True}).encode()
            timed("key check (SHA-256)", lambda: hash_key("crm_score_" + "x" * 43))
            request: ChurnRiskRequest = timed("parse the body (guard + BentoML)", lambda body=body: [  # type: ignore[assignment]
                ChurnRiskRequest.model_validate_json(body) for _ in range(2)][-1])
            rows: Any = timed(f"online read ({profile}, via the store thread)",
                              lambda request=request: predictor._read(bundle.reader, request.customer_ids))
            timed("eligibility", lambda rows=rows: _why_not(CHURN, bundle, rows.values, rows.found))
            x: Any = timed("encode", lambda rows=rows: scorer.encoder.matrix(rows.values, len(rows.ids)))
            raw: Any = timed("predict", lambda x=x: scorer.predict(x))
            timed("calibrate + score + band", lambda raw=raw: scorer.model.grading.assign(
                scorer.model.calibrator.apply(raw)))
            timed("reasons (explain: true)", lambda x=x, rows=rows: scorer.reasons(x, rows.values, 3))
            for explain in (False, True):
                answer: Any = timed(f"whole predictor, explain={str(explain).lower()}",
                                    lambda request=request, explain=explain: predictor.churn_risk(
                                        request.model_copy(update={"explain": explain})))
                timed(f"response JSON, explain={str(explain).lower()}", lambda answer=answer: answer.model_dump_json())
            time.sleep(0.002)
        for name, values in times.items():
            table.setdefault(name, {})[size] = statistics.median(values)
    predictor.close()
    lines += [f"| {name} | {v[1]:.2f} ms | {v[100]:.2f} ms |" for name, v in table.items()]
    return "\n".join(lines)


def serve_args(profile: str) -> list[str]:
    return [str(BIN / "crmscore"), "serve", "--port", "{port}", "--profile", profile, "--as-of", "snapshot",
            "--reload-seconds", "0"]


@contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A throw-away ``redis-server`` on a free port of 127.0.0.1 (no persistence): its URL."""
    import redis

    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port, socket_connect_timeout=0.5).ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def redis_profile(home: Path) -> Iterator[dict[str, str]]:
    """Register the workspace in a throw-away SQL registry (a SQLite file) and materialize
    into a private Redis; the server's environment for both."""
    from crmdata.workspace import Workspace
    from features.materialize import materialize_latest
    from features.store import apply_repository, feature_store

    ws = Workspace(home)
    registry_file = home / f"bench_registry_{uuid.uuid4().hex[:8]}.db"
    registry = f"sqlite:///{registry_file}"
    try:
        with private_redis(home) as redis_url:
            store = feature_store(ws, "redis", redis_url=redis_url, registry_url=registry)
            apply_repository(store, ws.feature_tables, "redis")
            materialize_latest(store, ws.feature_tables)
            yield {"CRMSCORE_REGISTRY_URL": registry, "CRMSCORE_REDIS_URL": redis_url}
    finally:
        registry_file.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/crmscore-bench-serving"))
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--redis", action="store_true", help="also the Redis profile")
    parser.add_argument("--write", action="store_true", help="write the ## serving section of BENCHMARKS.md")
    parser.add_argument("--value-only", action="store_true",
                        help="only the batch-1 rows of /churn_risk and /customer_value (no batch 100, no load)")
    parser.add_argument("--stages", action="store_true",
                        help="only the in-process stage timings of /churn_risk (SQLite; with --redis, Redis too)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("feast", "mlflow", "alembic", "numba", "matplotlib", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from bench.common import machine, write_section
    from serving.auth import create_key

    home = args.home.absolute()
    env = {"CRMSCORE_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
           "BENTOML_DO_NOT_TRACK": "true", "OPENBLAS_NUM_THREADS": "1"}
    if not (home / "READY").exists():
        started = time.monotonic()
        build_world(home, args.customers)
        log.info("world built in %.0f s", time.monotonic() - started)
    ensure_value_champion(home)
    key, _ = create_key(home / "keys" / "api_keys.json", "score", note="bench_serving")
    import polars as pl

    feats = pl.read_parquet(home / "features" / "customer.parquet", columns=["customer_id", "event_timestamp"])
    ids = feats.filter(pl.col("event_timestamp") == feats["event_timestamp"].max())["customer_id"].to_list()
    header = machine()
    if args.stages:
        print(f"In process, {header}:\n\n{stages(home, ids, 'local', {})}")
        if args.redis:
            with redis_profile(home) as extra:
                print(f"\n{stages(home, ids, 'redis', extra)}")
        return
    rows: list[Row] = []
    with server([str(BIN / "bentoml"), "serve", "bench.bench_serving:Echo", "--host", "127.0.0.1",
                 "--port", "{port}"], env, home / "echo.log") as echo:
        with server(serve_args("local"), env, home / "serve-local.log") as url:
            rows += scenarios((url, key), echo, ids, args.seconds, "SQLite", args.value_only)
        if args.redis:
            with redis_profile(home) as extra, server(serve_args("redis"), {**env, **extra},
                                                       home / "serve-redis.log") as url:
                rows += scenarios((url, key), echo, ids, args.seconds, "Redis", args.value_only)
    table = "\n".join(["| what | measured (crmscore vs echo) | goal | met |", "|---|---|---|---|"]
                      + [f"| {r.what} | {r.measured} | {r.goal} | {'—' if r.met is None else 'yes' if r.met else '**no**'} |"
                         for r in rows])
    body = (f"`bench/bench_serving.py` (`.venv/bin/python bench/bench_serving.py --customers {args.customers} "
            f"--seconds {args.seconds:.0f}{' --redis' if args.redis else ''}"
            f"{' --value-only' if args.value_only else ' --write'}`), {header}. Both servers "
            "(1 worker each) and the client run on this machine; the echo is a bare BentoML service with the "
            "same request schema (no key check, no model), measured in the same run, interleaved in rounds.\n\n"
            + table + f"\n\nLoad average at the end: {os.getloadavg()[0]:.1f}. Where the time goes per stage "
            "(`--stages`), and what was tried: docs/serving.md, section Performance.")
    print(body)
    if args.write and not args.value_only:
        write_section("serving", body)


if __name__ == "__main__":
    main()
