"""Validate a 1M-customer / ~20M-order synthetic lake and report the time (goal ≤ 30 s).

    .venv/bin/python bench/bench_validate.py [--customers 1000000] [--lake DIR] [--repeat 3]

Generates the lake once (or uses --lake), then runs ``validate_lake`` --repeat
times in this process and reports the median, plus the row counts it checked.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, write_section
from crmdata.contract import TABLES
from crmdata.lake import table_path
from crmdata.validate import validate_lake

log = logging.getLogger("bench_validate")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--lake", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    context = machine()
    lake = args.lake or Path(f"/tmp/crmscore-bench/world-{args.customers}")
    if not (lake / "orders.parquet").exists():
        from crmdata.synth import WorldConfig, generate_world

        log.info("generating %d customers into %s", args.customers, lake)
        generate_world(WorldConfig(customers=args.customers, leads=args.customers // 2, seed=1), lake)
    rows = {name: pl.scan_parquet(table_path(lake, name)).select(pl.len()).collect().item()
            for name in TABLES if table_path(lake, name).exists()}
    samples = []
    for i in range(args.repeat):
        started = time.perf_counter()
        problems = validate_lake(lake)
        samples.append(time.perf_counter() - started)
        log.info("run %d: %.1f s, %d problems", i + 1, samples[-1], len(problems))
    total = sum(rows.values())
    body = f"""`bench/bench_validate.py --customers {args.customers}`: `validate_lake` on a synthetic lake (seed 1),
{args.repeat} runs in one process, median reported. Machine: {context}.

| table | rows |
|---|---|
""" + "\n".join(f"| {k} | {v:,} |" for k, v in rows.items()) + f"""

| what | median | runs | goal |
|---|---|---|---|
| validate {rows.get('customers', 0):,} customers / {rows.get('orders', 0):,} orders ({total:,} rows in all tables) | **{median(samples):.1f} s** ({total / median(samples) / 1e6:.1f}M rows/s) | {", ".join(f"{s:.1f}" for s in samples)} s | ≤ 30 s |
"""
    log.info("\n%s", body)
    write_section("validate", body)


if __name__ == "__main__":
    main()
