"""The feature build on DuckDB and on Spark (local mode), side by side.

    .venv/bin/python bench/bench_spark_features.py [--customers 100000] [--runs 2]
                                                   [--master local[2]] [--write]

One generated world (``crmdata.synth``, the world of bench_features.py: N customers,
N/5 leads, 200 products, seed 1), the default build (12 weekly snapshots, the history
sample of ``features.history``), built ``--runs`` times by each engine in one process:
DuckDB first, then Spark on one session whose start is timed on its own. Per run, the
seconds of each table (from the build's log) and of the whole build; the figures are
medians over the runs. The first Spark run also pays the JVM's warm-up (class loading,
code generation, JIT), so it is reported apart. Finally the two engines' tables are
compared (the test's rule: same rows, floats to 1e-9). ``--write`` replaces the
"features: Spark" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_features import world
from bench.common import machine, median, write_section

log = logging.getLogger("bench_spark_features")
TABLES = ("customer", "lead", "product", "customer_value")


class TableSeconds(logging.Handler):
    """Collects the build's "<table> features: ... in N s" log lines (summed per table:
    a sampled build computes the newest and the older snapshots separately)."""

    pattern = re.compile(r"^(\w+) features: .* in ([0-9.]+)s$")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = self.pattern.match(record.getMessage())
        if match:
            self.seconds[match[1]] = self.seconds.get(match[1], 0.0) + float(match[2])


def timed_build(lake: Path, out: Path, grid: list, engine: str, master: str) -> tuple[float, dict[str, float], str]:
    from features.build import build_features

    handler = TableSeconds()
    logging.getLogger("features.build").addHandler(handler)
    load = f"{os.getloadavg()[0]:.1f}"
    try:
        started = time.perf_counter()
        build_features(lake, out, grid, engine=engine, spark_master=master if engine == "spark" else None)  # type: ignore[arg-type]
        seconds = time.perf_counter() - started
    finally:
        logging.getLogger("features.build").removeHandler(handler)
    load += f"->{os.getloadavg()[0]:.1f}"
    log.info("%s build: %.1f s (load %s) %s", engine, seconds, load, handler.seconds)
    return seconds, handler.seconds, load


def largest_gap(duck: Path, on_spark: Path) -> tuple[bool, float]:
    """Same rows and non-float values, and the largest float difference."""
    from features.catalog import table_file

    same, gap = True, 0.0
    for entity in TABLES:
        a, b = pl.read_parquet(duck / table_file(entity)), pl.read_parquet(on_spark / table_file(entity))
        if a.schema != b.schema or a.height != b.height:
            return False, float("nan")
        for name in a.columns:
            if a[name].dtype.is_float():
                same &= bool((a[name].is_null() == b[name].is_null()).all())
                gap = max(gap, float((a[name] - b[name]).abs().max() or 0.0))
            else:
                same &= a[name].to_list() == b[name].to_list()
    return same, gap


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "crmscore-bench-spark")
    parser.add_argument("--write", action="store_true", help="replace the section of BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("py4j", "pymc", "pytensor", "arviz", "features.peer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from features.grid import snapshot_grid
    from features.spark import spark_session

    where = machine()
    lake = world(args.workdir, args.customers)
    grid = snapshot_grid(lake, periods=12, include_truth=False)
    orders = pl.scan_parquet(lake / "orders.parquet").select(pl.len()).collect().item()
    runs: dict[str, list[tuple[float, dict[str, float], str]]] = {"duckdb": [], "spark": []}
    for _ in range(args.runs):
        runs["duckdb"].append(timed_build(lake, args.workdir / "duckdb", grid, "duckdb", args.master))
    started = time.perf_counter()
    spark = spark_session(args.master, app_name="crmscore-bench")
    session_seconds = time.perf_counter() - started
    log.info("Spark %s session (%s) in %.1f s", spark.version, spark.sparkContext.master, session_seconds)
    for _ in range(args.runs):
        runs["spark"].append(timed_build(lake, args.workdir / "spark", grid, "spark", args.master))
    same, gap = largest_gap(args.workdir / "duckdb", args.workdir / "spark")
    spark.stop()

    def cell(engine: str, table: str | None, warm: bool = False) -> str:
        if warm and len(runs[engine]) < 2:
            return "—"  # one run: no warm run to show
        chosen = runs[engine][1:] if warm else runs[engine]
        values = [r[0] if table is None else r[1].get(table, 0.0) for r in chosen]
        return f"{median(values):.1f}"

    lines = [
        (f"{args.customers:,} customers, {orders:,} orders, {args.customers // 5:,} leads, 200 products; "
        f"{len(grid)} weekly snapshots, the default build (history sample of `features.history`). "
        f"Measured {where}. Spark {spark.version}, master `{args.master}`, one session for all its runs; "
        f"DuckDB {__import__('duckdb').__version__} with its default threads (2)."),
        "",
        f"Spark session start (JVM up, not counted below): **{session_seconds:.1f} s**.",
        "",
        "| step (s) | DuckDB, median | Spark, median | Spark, runs after the first |",
        "|---|---:|---:|---:|",
        *[f"| {t} | {cell('duckdb', t)} | {cell('spark', t)} | {cell('spark', t, warm=True)} |" for t in TABLES],
        (f"| whole build (+ RFM, peer, write) | **{cell('duckdb', None)}** | **{cell('spark', None)}** | "
        f"{cell('spark', None, warm=True)} |"),
        "",
        "Every run (seconds, load average before->after): "
        + "; ".join(f"{e} " + ", ".join(f"{r[0]:.1f} ({r[2]})" for r in rs) for e, rs in runs.items()) + ".",
        "",
        (f"Same tables: {'yes' if same else 'NO'} (same rows and non-float values; the largest float "
        f"difference {gap:.1e})."),
        "",
        ("How: `bench/bench_spark_features.py --customers "
        f"{args.customers} --runs {args.runs} --master '{args.master}'`. Table seconds are the build's "
        "own per-table log lines (query + typing; the customer-value line includes the RFM scores and "
        "the peer fits, which run on the driver for both engines)."),
    ]
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("features: Spark", body)


if __name__ == "__main__":
    main()
