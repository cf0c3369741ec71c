"""A 6-fold churn backtest against one training run on the same synthetic world.

Goal: the backtest (6 folds, each a training as of its origin plus scoring and judging
the window after it) takes at most 6× one ``crmscore train churn``. The single run
goes first on a fresh workspace (it builds the feature snapshots it needs); the
backtest follows and reuses whatever snapshots exist. Writes the "backtest" section
of BENCHMARKS.md.

    .venv/bin/python bench/bench_backtest.py [--customers 20000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_section

ROOT = Path("/tmp/crmscore-bench/backtest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    context = machine()

    from crmdata.synth import WorldConfig, generate_world
    from crmdata.workspace import Workspace

    ws = Workspace(ROOT)
    shutil.rmtree(ROOT, ignore_errors=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws.home}/mlflow/mlflow.db"
    os.environ["CRMSCORE_HOME"] = str(ws.home)
    generate_world(WorldConfig(customers=args.customers, leads=args.customers // 2, products=200, seed=args.seed),
                   ws.lake)
    from pipelines.backtest import backtest
    from pipelines.train import train_task
    from training.tasks import CHURN

    started = time.perf_counter()
    single = train_task(ws, CHURN)
    single_seconds = time.perf_counter() - started
    result = backtest(ws, CHURN)

    rows = [f"| {f.origin:%Y-%m-%d} | {f.rows:,} | {f.positive_rate:.3f} | {f.roc_auc:.4f} | {f.pr_auc:.4f} | "
            f"{f.ece:.4f} | {f.lift_top10:.2f} | {f.baseline_roc_auc:.4f} | {f.seconds:.0f} |" for f in result.folds]
    body = "\n".join([
        (f"`bench/bench_backtest.py --customers {args.customers}`: synthetic world seed {args.seed} "
         f"({args.customers:,} customers, {args.customers // 2:,} leads). `crmscore backtest churn` with its defaults "
         f"(6 origins every 30 days back from the newest whose 90-day window the data covers), after one "
         f"`crmscore train churn` on a fresh workspace. Machine: {context}."),
        "",
        "| origin | rows | positive rate | ROC-AUC | PR-AUC | ECE | lift top 10% | rule ROC-AUC | fold s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        (f"Goal: the backtest ≤ 6× one training run. One training run {single_seconds:.0f} s (its feature build "
         f"included; holdout ROC-AUC {single.metrics['overall']['roc_auc']:.4f}); the 6-fold backtest "
         f"{result.seconds:.0f} s, **{result.seconds / single_seconds:.1f}×**."),
    ])
    print(body)
    write_section("backtest", body)


if __name__ == "__main__":
    main()
