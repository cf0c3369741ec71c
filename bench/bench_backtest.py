"""A 6-fold backtest against one training run on the same synthetic world.

Goal: the backtest (6 folds, each a training as of its origin plus using the model
there and judging the window after it) takes at most 6× one ``crmscore train``. The
single run goes first on a fresh workspace (it builds the feature snapshots it
needs); the backtest follows and reuses whatever snapshots exist. Wall-clock and
process CPU seconds are both reported: on a shared machine the CPU ratio is the
steadier of the two. Writes the "backtest" section of BENCHMARKS.md unless
``--print-only``.

    .venv/bin/python bench/bench_backtest.py [--customers 100000] [--task churn|nbp] [--print-only]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_section

if TYPE_CHECKING:
    from pipelines.backtest import Fold

ROOT = Path("/tmp/crmscore-bench/backtest")


def fold_row(f: Fold, kind: str) -> str:
    """One markdown row: the fold's metrics, or its skip reason."""
    if f.skipped is not None:
        cells = 8 if kind == "binary" else 6
        return f"| {f.origin:%Y-%m-%d} | skipped: {f.skipped} |" + " |" * (cells - 1)
    if kind == "binary":
        return (f"| {f.origin:%Y-%m-%d} | {f.rows:,} | {f.positive_rate:.3f} | {f.roc_auc:.4f} | "
                f"{f.pr_auc:.4f} | {f.ece:.4f} | {f.lift_top10:.2f} | {f.baseline_roc_auc:.4f} | "
                f"{f.seconds:.0f} |")
    return (f"| {f.origin:%Y-%m-%d} | {f.rows:,} | {f.ndcg_at_10:.4f} | {f.popularity_ndcg_at_10:.4f} | "
            f"{f.hit_rate_at_10:.4f} | {f.popularity_hit_rate_at_10:.4f} | {f.seconds:.0f} |")


HEADERS = {
    "binary": ("| origin | rows | positive rate | ROC-AUC | PR-AUC | ECE | lift top 10% | rule ROC-AUC | fold s |\n"
               "|---|---|---|---|---|---|---|---|---|"),
    "recommender": ("| origin | rows | NDCG@10 | popularity NDCG@10 | hit rate@10 | popularity hit rate@10 | fold s |\n"
                    "|---|---|---|---|---|---|---|"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--task", choices=("churn", "lead", "nbp"), default="churn")
    parser.add_argument("--print-only", action="store_true", help="Print the section; leave BENCHMARKS.md alone.")
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
    from training.registry import configure_mlflow, ensure_experiment
    from training.tasks import get_task

    task = get_task(args.task)
    # Warm-up outside both timings: the imports and the new MLflow store's migrations (seconds)
    # would otherwise be charged to the single run alone.
    import implicit  # noqa: F401
    import lightgbm  # noqa: F401

    ensure_experiment(configure_mlflow(), task.model_name)
    wall, cpu = time.perf_counter(), time.process_time()
    single = train_task(ws, task)
    single_wall, single_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    result = backtest(ws, task)
    fold_wall, fold_cpu = time.perf_counter() - wall, time.process_time() - cpu
    load_end = os.getloadavg()[0]

    headline = "roc_auc" if task.scorer == "binary" else "ndcg_at_10"
    skipped = len(result.folds) - len(result.ran)
    inputs = "its feature build included" if task.scorer == "binary" else "orders only: no features to build"
    body = "\n".join([
        (f"`bench/bench_backtest.py --customers {args.customers} --task {task.key}`: synthetic world seed "
         f"{args.seed} ({args.customers:,} customers, {args.customers // 2:,} leads, 200 products). "
         f"`crmscore backtest {task.key}` with its defaults (6 origins every 30 days back from the newest whose "
         f"{result.window_days}-day window the data covers), after one `crmscore train {task.key}` on a fresh "
         f"workspace. Machine: {context}, {load_end:.1f} at the end (shared with other jobs)."),
        "",
        HEADERS[task.scorer],
        *(fold_row(f, task.scorer) for f in result.folds),
        "",
        (f"Goal: the backtest ≤ 6× one training run. One training run {single_wall:.0f} s wall, {single_cpu:.0f} s "
         f"CPU ({inputs}; holdout {headline} {single.metrics['overall'][headline]:.4f}); "
         f"the 6-fold backtest{f' ({skipped} skipped)' if skipped else ''} {fold_wall:.0f} s wall, "
         f"{fold_cpu:.0f} s CPU: **{fold_wall / single_wall:.1f}×** wall-clock, {fold_cpu / single_cpu:.1f}× CPU."),
    ])
    print(body)
    if not args.print_only:
        write_section("backtest", body)


if __name__ == "__main__":
    main()
