"""Time ``crmscore report`` on synthetic worlds (goal: ≤ 60 s at 1M customers).

    .venv/bin/python bench/bench_report.py [--customers 100000 1000000] [--repeat 1] [--no-scores]

For each size: the world (seed 1) is generated once into /tmp/crmscore-bench/world-N (or
reused), a workspace links to it as its lake, and — unless --no-scores — score tables are
written so that every section has work: a churn and a lead run 120 days before the
report date (the active customers / open leads at that date, random probabilities, grades
by the tasks' shares) and two customer-value runs (every customer, random CLV and tiers).
These are stand-ins for timing the report's reads and joins; their numbers mean nothing.
Then ``crmscore report`` runs as a child process (imports, DuckDB, matplotlib, the MLflow
log to a throwaway SQLite store included); wall time, peak RSS and the report's own
per-section seconds are written to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, write_section
from crmdata.contract import TABLES
from crmdata.lake import table_path
from crmdata.workspace import Workspace

log = logging.getLogger("bench_report")
ROOT = Path(__file__).resolve().parent.parent
CRMSCORE = ROOT / ".venv" / "bin" / "crmscore"
GOAL_SECONDS = 60.0


def world(customers: int) -> Path:
    lake = Path(f"/tmp/crmscore-bench/world-{customers}")
    if not (lake / "customers.parquet").exists():
        from crmdata.synth import WorldConfig, generate_world

        log.info("generating %d customers into %s", customers, lake)
        generate_world(WorldConfig(customers=customers, leads=customers // 2, seed=1), lake)
    return lake


def stand_in_scores(ws: Workspace, as_of: datetime) -> dict[str, int]:
    """Score partitions with random values, shaped like ``crmscore score``'s (see the docstring)."""
    from features.labels import churn_population, open_leads
    from pipelines.report.scores import clv_tiers
    from pipelines.scoring.table import RunManifest, partition_dir, write_manifest

    rng = np.random.default_rng(1)
    written: dict[str, int] = {}

    def put(task: str, date: datetime, frame: pl.DataFrame) -> None:
        path = partition_dir(ws.scores, task, date)
        path.mkdir(parents=True, exist_ok=True)
        frame.with_columns(pl.lit(date).alias("as_of")).write_parquet(path / "part-00000.parquet")
        write_manifest(path, RunManifest(task=task, as_of=date, engine="local", model_name=f"bench-{task}",
                                         model_version="0", entities=frame.height, rows=frame.height, seconds=0.0,
                                         rows_per_second=0.0, output=str(path), started_at=date))
        written[f"{task} {date:%Y-%m-%d}"] = frame.height

    def graded(ids: pl.Series, key: str, grade: str, labels: list[str], shares: list[float]) -> pl.DataFrame:
        p = rng.random(ids.len())
        # The best grade for the top shares[0] of probabilities, and so on down.
        cuts = np.quantile(p, 1 - np.cumsum(shares)[:-1]) if ids.len() else np.array([])
        index = (p[:, None] < cuts[None, :]).sum(axis=1)
        return pl.DataFrame({key: ids, "probability": p, "score": (p * 98 + 1).astype(int),
                             grade: np.asarray(labels)[index]})

    past = as_of - timedelta(days=120)
    churn_ids = churn_population(ws.lake, past).get_column("customer_id")
    put("churn", past, graded(churn_ids, "customer_id", "band", ["high", "medium", "low"], [0.1, 0.2, 0.7]))
    if table_path(ws.lake, "leads").exists():
        lead_ids = open_leads(ws.lake, past).get_column("lead_id")
        put("lead", past, graded(lead_ids, "lead_id", "grade", ["A", "B", "C", "D"], [0.1, 0.2, 0.3, 0.4]))
    customers = pl.read_parquet(table_path(ws.lake, "customers"), columns=["customer_id"]).get_column("customer_id")
    for date in (as_of - timedelta(days=35), as_of - timedelta(days=7)):
        clv = rng.gamma(1.5, 300.0, customers.len())
        put("clv", date, pl.DataFrame({
            "customer_id": customers, "clv": clv, "clv_low": clv * 0.6, "clv_high": clv * 1.5,
            "expected_margin": clv * 0.3, "tier": np.asarray(clv_tiers())[rng.integers(0, 4, customers.len())],
            "rfm_segment": "bench", "model_version": "0"}))
    return written


def run_report(home: Path, mlflow_dir: Path) -> tuple[float, dict, float]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_dir / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([str(CRMSCORE), "--home", str(home), "report", "--json"], capture_output=True, text=True,
                          env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"crmscore report failed: {done.stderr[-2000:]}")
    rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return seconds, json.loads(done.stdout), rss_gib


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-scores", action="store_true")
    parser.add_argument("--print-only", action="store_true", help="print the section, leave BENCHMARKS.md")
    args = parser.parse_args()
    context = machine()
    rows_out = []
    for customers in args.customers:
        lake = world(customers)
        rows = {name: pl.scan_parquet(table_path(lake, name)).select(pl.len()).collect().item()
                for name in TABLES if table_path(lake, name).exists()}
        with tempfile.TemporaryDirectory(prefix=f"bench-report-{customers}-") as tmp:
            home = Path(tmp)
            (home / "lake").symlink_to(lake, target_is_directory=True)
            ws = Workspace(home)
            from pipelines.report.build import default_as_of

            as_of = default_as_of(ws.lake)
            scored = {} if args.no_scores else stand_in_scores(ws, as_of)
            samples, data, rss = [], {}, 0.0
            for i in range(args.repeat):
                seconds, data, rss = run_report(home, home / "mlflow")
                samples.append(seconds)
                log.info("%d customers, run %d: %.1f s (sections %s)", customers, i + 1, seconds, data["seconds"])
        rows_out.append((customers, rows, median(samples), samples, data["seconds"], rss, scored))
    body = f"""`bench/bench_report.py --customers {' '.join(str(c) for c in args.customers)}`: `crmscore report` as a child
process (Python start, imports, DuckDB, five matplotlib charts, HTML + JSON written, the MLflow log to a
throwaway SQLite store), on synthetic worlds (seed 1){'' if args.no_scores else ''', with stand-in score tables
(random values: a churn and a lead run 120 days before the report date, two customer-value runs of every
customer) so the monitor and value sections have rows to read and join'''}. Machine: {context}.

| customers | orders | interactions | leads | wall (median) | runs | peak RSS | seconds per section (the report's own) | goal |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(
        f"| {c:,} | {r.get('orders', 0):,} | {r.get('interactions', 0):,} | {r.get('leads', 0):,} | **{m:.1f} s** | "
        f"{', '.join(f'{x:.1f}' for x in s)} | {rss:.1f} GiB | "
        f"{', '.join(f'{k} {v:.1f}' for k, v in secs.items())} | ≤ {GOAL_SECONDS:.0f} s at 1M |"
        for c, r, m, s, secs, rss, _ in rows_out)
    if not args.print_only:
        write_section("report", body)
    print(body)


if __name__ == "__main__":
    main()
