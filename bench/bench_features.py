"""Feature-store benchmarks: build, training frame, materialize, online read.

    .venv/bin/python bench/bench_features.py [--customers 100000] [--materialize 50000]
                                             [--write BENCHMARKS.md]

* build: ``build_features`` on a generated world (``crmdata.synth``) at 12 weekly
  snapshots, and on half its customers to measure how it scales;
* training frame: ``training_frame`` (``get_historical_features``) of churn_v1
  for 200k (customer, cutoff) rows;
* materialize: ``materialize_latest`` (bulk path) of N synthetic customers into
  SQLite and Redis against a raw bulk write of the *same rows*, read back from the
  store after it was written and written again, only the writes timed: SQLite, the
  same multi-row INSERTs and per-batch transactions into a fresh file with the same
  schema and indexes; Redis, the same pipelined ``HSET`` sender to new keys; and, on
  a smaller population (``--feast-materialize``), Feast's own ``materialize``
  (``fast=False``) against its raw write, for the before/after ratio;
* online read: ``read_online`` (fast path and SDK) for 1 and 100 customers
  against a raw SQLite select / Redis ``HMGET`` of the same keys, p50/p99,
  interleaved sample by sample.

Everything runs in one process, one after the other, so ratios compare like
with like. Redis runs against a private ``redis-server`` on a free port (started and
killed here; never the shared :6379), skipped when none is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from crmdata.workspace import Workspace
from features.build import BUILD_SUMMARY, BuildSummary, build_features, write_feature_table
from features.catalog import CHURN_SERVICE, EVENT_TIMESTAMP, FEATURES, table_file
from features.grid import snapshot_grid
from features.materialize import materialize_latest
from features.online import read_online
from features.store import Profile, apply_repository, feature_store
from features.training import training_frame

log = logging.getLogger("bench_features")


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


class Clock:
    """Wall and CPU seconds of timed sections, summed. CPU is this process's, plus the
    redis-server's when one is given (its ``used_cpu_*``): on a machine shared with other
    jobs, CPU seconds say what the work costs, wall seconds what it took under the load."""

    def __init__(self, client=None) -> None:
        self.client, self.wall, self.cpu = client, 0.0, 0.0

    def _cpu(self) -> float:
        cpu = time.process_time()
        if self.client is not None:
            info = self.client.info("cpu")
            cpu += info["used_cpu_user"] + info["used_cpu_sys"]
        return cpu

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), self._cpu()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += self._cpu() - cpu


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1e3 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]


def world(workdir: Path, customers: int) -> Path:
    lake = workdir / f"lake{customers}"
    if not (lake / "_lake.json").exists():
        from crmdata.synth import WorldConfig, generate_world

        log.info("generating a %d-customer world", customers)
        generate_world(WorldConfig(customers=customers, leads=customers // 5, products=200, seed=1), lake)
    return lake


def half_lake(lake: Path, out: Path) -> Path:
    """The same world restricted to every other customer (for the scaling figure)."""
    if (out / "_lake.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    keep = pl.read_parquet(lake / "customers.parquet").filter(pl.int_range(pl.len()) % 2 == 0)["customer_id"]
    for path in lake.glob("*.parquet"):
        frame = pl.read_parquet(path)
        if "customer_id" in frame.columns and path.stem != "leads":
            frame = frame.filter(pl.col("customer_id").is_in(keep.implode()))
        frame.write_parquet(out / path.name)
    shutil.copy(lake / "_lake.json", out / "_lake.json")
    return out


def bench_build(workdir: Path, customers: int) -> dict:
    lake = world(workdir, customers)
    orders = pl.scan_parquet(lake / "orders.parquet").select(pl.len()).collect().item()
    grid = snapshot_grid(lake, periods=12, include_truth=False)
    ws = Workspace(workdir / "ws-build")
    summary, seconds = timed(build_features, lake, ws.feature_tables, grid)
    _, half_seconds = timed(build_features, half_lake(lake, workdir / "half"), workdir / "half-features", grid)
    rows = sum(e.rows for e in summary.entities.values())
    exponent = float(np.log(seconds / half_seconds) / np.log(2))
    return {
        "ws": ws,
        "customers": customers,
        "orders": orders,
        "snapshots": len(grid),
        "seconds": seconds,
        "rows": rows,
        "half_seconds": half_seconds,
        "exponent": exponent,
        "projected_1m": seconds * (1_000_000 / customers) ** exponent,
        "summary": summary,
    }


def bench_training(ws: Workspace, rows: int = 200_000) -> dict:
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    table = pl.read_parquet(ws.feature_tables / table_file("customer"), columns=["customer_id", EVENT_TIMESTAMP])
    labels = table.sample(n=min(rows, table.height), seed=1, with_replacement=rows > table.height)
    labels = labels.with_columns(pl.lit(0).alias("label"))
    frame, seconds = timed(training_frame, store, CHURN_SERVICE, labels)
    return {"rows": len(frame), "features": frame.shape[1] - 3, "seconds": seconds}


def synthetic_workspace(root: Path, customers: int) -> Workspace:
    """One snapshot of N customers with every catalogue feature (random values)."""
    ws = Workspace(root)
    ws.feature_tables.mkdir(parents=True, exist_ok=True)
    snap = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rng = np.random.default_rng(0)
    for entity, key, n in (("customer", "customer_id", customers), ("lead", "lead_id", 10), ("product", "product_id", 10)):
        cols: dict = {key: [f"{entity[0].upper()}{i}" for i in range(n)], EVENT_TIMESTAMP: [snap] * n}
        for spec in FEATURES[entity]:
            cols[spec.name] = (
                rng.integers(0, 100, n) if spec.kind == "int"
                else rng.random(n) if spec.kind == "float"
                else rng.choice(["a", "b", "c"], n)
            )
        write_feature_table(pl.DataFrame(cols), ws.feature_tables / table_file(entity))
    summary = BuildSummary(lake="synthetic", as_of=[snap], tables_present=[], tables_missing=[], entities={}, seconds=0)
    (ws.feature_tables / BUILD_SUMMARY).write_text(summary.model_dump_json())
    return ws


def raw_sqlite_write(db: Path, table: str, width: int) -> tuple[Clock, int]:
    """Time a plain bulk write of the rows the store holds: read back in table order,
    ``MATERIALIZE_BATCH`` entities at a time, and inserted into a fresh database file
    with the table's own schema and indexes, with the statement shape and transactions
    of the bulk writer (``SQLITE_ROWS_PER_STATEMENT`` rows per INSERT, one commit per
    batch) and no ON CONFLICT. Same pragmas as the store: SQLite's defaults. Only the
    inserts are timed; streaming keeps a million customers' rows out of memory."""
    from itertools import chain

    from features.materialize import MATERIALIZE_BATCH, SQLITE_ROWS_PER_STATEMENT, sqlite_insert

    target = db.with_name(f"raw-{db.name}")
    target.unlink(missing_ok=True)
    source, out = sqlite3.connect(db), sqlite3.connect(target)
    for (sql,) in source.execute("SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL", (table,)):
        out.execute(sql)
    out.commit()
    per = max(1, SQLITE_ROWS_PER_STATEMENT // width) * width
    statement, columns = sqlite_insert(f'"{table}"', per, upsert=False), 6
    cursor = source.execute(
        f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts FROM "{table}" ORDER BY rowid'
    )
    clock, rows = Clock(), 0
    while chunk := cursor.fetchmany(MATERIALIZE_BATCH * width):
        flat = list(chain.from_iterable(chunk))
        whole = len(chunk) - len(chunk) % per
        params = [flat[i : i + per * columns] for i in range(0, whole * columns, per * columns)]
        with clock(), out:
            out.executemany(statement, params)
            if whole < len(chunk):
                out.execute(sqlite_insert(f'"{table}"', len(chunk) - whole, upsert=False), flat[whole * columns :])
        rows += len(chunk)
    source.close()
    out.close()
    target.unlink()
    return clock, rows


def bench_sqlite(ws: Workspace, customers: int, *, fast: bool = True, reads: bool = True) -> dict:
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    ours = Clock()
    with ours():
        materialize_latest(store, ws.feature_tables, ["customer_features"], fast=fast)
    db = ws.feast / "online_store.db"
    table = f"{store.project}_customer_features"
    raw, rows = raw_sqlite_write(db, table, len(store.get_feature_view("customer_features").features))
    result = {"seconds": ours.wall, "raw_seconds": raw.wall, "cpu": ours.cpu, "raw_cpu": raw.cpu,
              "rows": rows, "customers": customers, "reads": {}}
    if not reads:
        return result
    # Online reads: the same keys through read_online (fast, SDK) and a raw select.
    conn = sqlite3.connect(db)
    ids = [f"C{i}" for i in range(100)]
    from features.codec import entity_keys as _entity_keys

    keys = _entity_keys(("customer_id",), [(i,) for i in ids], store.config.entity_key_serialization_version)
    for n, loops in ((1, 2000), (100, 300)):
        raw, fast_, sdk = [], [], []
        for _ in range(loops):
            t = time.perf_counter()
            conn.execute(
                f'SELECT entity_key, feature_name, value, event_ts FROM "{table}" WHERE entity_key IN ({",".join("?" * n)})',
                keys[:n],
            ).fetchall()
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            read_online(store, CHURN_SERVICE, ids[:n])
            fast_.append(time.perf_counter() - t)
        for _ in range(loops // 10):
            t = time.perf_counter()
            read_online(store, CHURN_SERVICE, ids[:n], fast=False)
            sdk.append(time.perf_counter() - t)
        result["reads"][n] = {"raw": percentiles(raw), "fast": percentiles(fast_), "sdk": percentiles(sdk)}
    conn.close()
    return result


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str | None]:
    """A throw-away ``redis-server`` on a free port (no persistence), never the shared
    :6379: the benchmark writes millions of keys and other jobs share that server.
    Yields its URL, or None when no ``redis-server`` is installed."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"private redis-server on :{port} did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def redis_store(ws: Workspace, project: str, url: str):
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from features.store import StoreSettings, config_dict

    registry = Workspace(ws.home / f"redis-registry-{project}")
    # The registry stays a local file here: the benchmark measures the online store.
    config = config_dict(registry, StoreSettings(profile=Profile.REDIS, project=project, redis_url=url))
    config["registry"] = {"registry_type": "file", "path": str(registry.feast / "registry.db")}
    registry.feast.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=RepoConfig(repo_path=ws.feature_tables, **config))


def raw_redis_write(client, project: str) -> tuple[Clock, int, list[bytes]]:
    """Time a plain bulk write of the hashes the store holds: read back (``HGETALL``)
    ``MATERIALIZE_BATCH`` at a time and written to ``raw:<key>`` with the bulk writer's
    own pipelined sender (``send_hsets``: the fastest plain HSET this code has), so
    the ratio is what encoding and Feast's timestamp check add. Only writes are timed."""
    from features.materialize import MATERIALIZE_BATCH, send_hsets

    keys = sorted(client.scan_iter(match=f"*{project}", count=10_000))
    clock = Clock(client)
    for i in range(0, len(keys), MATERIALIZE_BATCH):
        chunk = keys[i : i + MATERIALIZE_BATCH]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.hgetall(key)
        hashes = pipe.execute()
        fields = list(hashes[0])
        columns = []
        for field in fields:
            column = np.empty(len(chunk), dtype=object)
            column[:] = [h[field] for h in hashes]
            columns.append(column)
        raw = np.empty(len(chunk), dtype=object)
        raw[:] = [b"raw:" + k for k in chunk]
        with clock():
            send_hsets(client, raw, fields, columns)
        client.delete(*raw.tolist())  # keep the server's memory to one copy
    return clock, len(keys), keys


def bench_redis(ws: Workspace, customers: int, url: str | None, *, fast: bool = True, reads: bool = True) -> dict | None:
    import redis

    if url is None:
        log.warning("no redis-server installed: skipping the Redis benchmarks")
        return None
    client = redis.Redis.from_url(url)
    project = f"bench{uuid.uuid4().hex[:8]}"
    store = redis_store(ws, project, url)
    try:
        apply_repository(store, ws.feature_tables, Profile.REDIS)
        ours = Clock(client)
        with ours():
            materialize_latest(store, ws.feature_tables, ["customer_features"], fast=fast)
        raw, hashes, keys = raw_redis_write(client, project)
        result = {"seconds": ours.wall, "raw_seconds": raw.wall, "cpu": ours.cpu, "raw_cpu": raw.cpu,
                  "rows": hashes, "customers": customers, "reads": {}}
        if not reads:
            return result
        from features.codec import entity_keys as _entity_keys

        ids = [f"C{i}" for i in range(100)]
        read_keys = [k + project.encode() for k in _entity_keys(("customer_id",), [(i,) for i in ids], 3)]
        fields = list(client.hgetall(keys[0])) if keys else []
        for n, loops in ((1, 2000), (100, 300)):
            raw, fast_, sdk = [], [], []
            for _ in range(loops):
                t = time.perf_counter()
                pipe = client.pipeline(transaction=False)
                for key in read_keys[:n]:
                    pipe.hmget(key, fields)
                pipe.execute()
                raw.append(time.perf_counter() - t)
                t = time.perf_counter()
                read_online(store, CHURN_SERVICE, ids[:n])
                fast_.append(time.perf_counter() - t)
            for _ in range(loops // 10):
                t = time.perf_counter()
                read_online(store, CHURN_SERVICE, ids[:n], fast=False)
                sdk.append(time.perf_counter() - t)
            result["reads"][n] = {"raw": percentiles(raw), "fast": percentiles(fast_), "sdk": percentiles(sdk)}
        return result
    finally:
        store.teardown()
        leftovers = list(client.scan_iter(match=f"*{project}*", count=10_000))
        for i in range(0, len(leftovers), 10_000):
            client.delete(*leftovers[i : i + 10_000])


def render(build: dict | None, training: dict | None, runs: dict[str, dict | None], load: tuple[float, float]) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "## features",
        "",
        (f"`bench/bench_features.py`, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({cpu}), "
        f"Python {platform.python_version()}, load average {load[0]:.1f} at start / {load[1]:.1f} at end "
        "(other jobs shared the machine; figures are wall-clock, one run; every ratio compares two "
        "measurements of the same run)."),
        "",
        "| what | measured | goal | notes |",
        "|---|---|---|---|",
    ]
    if build:
        lines.append(
            f"| build: {build['customers']:,} customers / {build['orders']:,} orders, {build['snapshots']} weekly snapshots "
            f"| {build['seconds']:.1f} s ({build['rows'] / build['seconds']:,.0f} feature rows/s, "
            f"{build['orders'] * build['snapshots'] / build['seconds']:,.0f} order-snapshots/s) | ≤ 60 s "
            f"| half the customers: {build['half_seconds']:.1f} s → time ∝ n^{build['exponent']:.2f}; "
            f"1M customers ≈ {build['projected_1m'] / 60:.1f} min projected |"
        )
    if training:
        lines.append(
            f"| training frame: churn_v1, {training['rows']:,} (customer, cutoff) rows × {training['features']} features "
            f"| {training['seconds']:.1f} s | ≤ 60 s | Feast file (dask) offline store, `get_historical_features` via the service |"
        )
    for label, res in runs.items():
        name, how = label.split(":")
        if res is None:
            lines.append(f"| materialize into {name} ({how}) | skipped | | no server |")
            continue
        unit = "rows" if name == "SQLite" else "hashes"
        server = " (client + redis-server)" if name == "Redis" else ""
        projection = "" if res["customers"] >= 1_000_000 else (
            f"; 1M customers ≈ {res['seconds'] * 1e6 / res['customers'] / 60:.1f} min at this rate"
        )
        raw_rate = res["rows"] / res["raw_seconds"]
        lines.append(
            f"| materialize {res['customers']:,} customers into {name}, {how} | {res['seconds']:.1f} s "
            f"({res['customers'] / res['seconds']:,.0f} customers/s) vs raw {res['raw_seconds']:.1f} s "
            f"({res['rows']:,} {unit}, {raw_rate:,.0f}/s) = **{res['raw_seconds'] / res['seconds']:.0%} of raw** "
            f"| ≥ 50 % of raw | CPU {res['cpu']:.1f} s vs raw {res['raw_cpu']:.1f} s{server} "
            f"= {res['raw_cpu'] / res['cpu']:.0%} of raw{projection} |"
        )
    for label, res in runs.items():
        if res is None:
            continue
        name = label.split(":")[0]
        for n, r in res["reads"].items():
            lines.append(
                f"| online read churn_v1, {n} customer{'s' if n > 1 else ''}, {name} "
                f"| fast p50/p99 {r['fast'][0]:.2f}/{r['fast'][1]:.2f} ms; SDK {r['sdk'][0]:.2f}/{r['sdk'][1]:.2f} ms; "
                f"raw {r['raw'][0]:.2f}/{r['raw'][1]:.2f} ms | p99 ≤ 2× raw "
                f"| fast p99 = {r['fast'][1] / r['raw'][1]:.1f}× raw (p50 {r['fast'][0] / r['raw'][0]:.1f}×), "
                f"SDK p99 = {r['sdk'][1] / r['raw'][1]:.1f}× raw |"
            )
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) only the "## features" section of BENCHMARKS.md."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find("\n## features")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + (text[end:] if end != -1 else "")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--materialize", type=int, default=50_000, help="customers to materialize (goal: 1M)")
    parser.add_argument(
        "--feast-materialize", type=int, default=20_000,
        help="customers for Feast's own materialize (the 'before' figure; 0 to skip)",
    )
    parser.add_argument("--skip-build", action="store_true", help="only materialize and online reads")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--write", type=Path, default=None, help="update the '## features' section of this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("feast", "dask", "distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    load_start = os.getloadavg()[0]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-features-"))
    workdir.mkdir(parents=True, exist_ok=True)
    build = training = None
    if not args.skip_build:
        build = bench_build(workdir, args.customers)
        log.info("build: %.1fs", build["seconds"])
        training = bench_training(build["ws"])
        log.info("training frame: %.1fs", training["seconds"])
    runs: dict[str, dict | None] = {}
    with private_redis(workdir) as url:
        if args.feast_materialize:
            small = synthetic_workspace(workdir / "ws-feast", args.feast_materialize)
            runs["SQLite:Feast materialize"] = bench_sqlite(small, args.feast_materialize, fast=False, reads=False)
            small_bulk = synthetic_workspace(workdir / "ws-feast-bulk", args.feast_materialize)
            runs["SQLite:bulk"] = bench_sqlite(small_bulk, args.feast_materialize, reads=False)
            runs["Redis:Feast materialize"] = bench_redis(small, args.feast_materialize, url, fast=False, reads=False)
            runs["Redis:bulk"] = bench_redis(small_bulk, args.feast_materialize, url, reads=False)
            log.info("small runs: %s", {k: v and round(v["raw_seconds"] / v["seconds"], 2) for k, v in runs.items()})
        ws = synthetic_workspace(workdir / "ws-online", args.materialize)
        # Redis first: the shorter of the two at a million customers.
        runs["Redis:bulk "] = bench_redis(ws, args.materialize, url)
        log.info("redis: %s", runs["Redis:bulk "])
        runs["SQLite:bulk "] = bench_sqlite(ws, args.materialize)
        log.info("sqlite: %s", runs["SQLite:bulk "])
        runs = dict(sorted(runs.items(), key=lambda item: not item[0].startswith("SQLite")))
    section = render(build, training, runs, (load_start, os.getloadavg()[0]))
    log.info("results:\n%s", section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
