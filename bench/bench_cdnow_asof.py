"""CDNOW as of a past date: transactional churn trained ``--as-of 1997-09-30``, every customer
scored at 1997-10-01, and the scores judged on what happened next (no purchase in 90 days).

The training run sees only what was observable on 1997-09-30 (cutoffs whose 90-day label
windows end by then); the evaluation labels come from the orders after 1997-10-01, which
no part of the model saw. Writes the "CDNOW as of 1997-10-01" section of BENCHMARKS.md.

    .venv/bin/python bench/bench_cdnow_asof.py
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_section

ROOT = Path("/tmp/crmscore-bench")
TRAIN_AS_OF = datetime(1997, 9, 30, tzinfo=UTC)
SCORE_AS_OF = datetime(1997, 10, 1, tzinfo=UTC)
WINDOW_DAYS = 90


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    context = machine()
    import polars as pl
    from sklearn.metrics import average_precision_score, roc_auc_score

    from crmdata.importer import import_lake
    from crmdata.lake import read_table
    from crmdata.workspace import Workspace

    ws = Workspace(ROOT / "cdnow-asof")
    shutil.rmtree(ws.home, ignore_errors=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws.home}/mlflow/mlflow.db"
    os.environ["CRMSCORE_HOME"] = str(ws.home)
    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions
    from pipelines.train import train_task
    from training.tasks import CHURN

    import_lake(Path(__file__).resolve().parent.parent / "examples/cdnow/mapping.yaml", ws.lake)
    started = time.perf_counter()
    trained = train_task(ws, CHURN, mode="transactional", window_days=WINDOW_DAYS, as_of=TRAIN_AS_OF)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run = score(ws, CHURN.key, SCORE_AS_OF, ScoreOptions(reasons="none", drift=False))
    score_seconds = time.perf_counter() - started

    scores = pl.read_parquet(Path(run.output) / "*.parquet").select("customer_id", "probability")
    orders = read_table(ws.lake, "orders", ["customer_id", "ordered_at"])
    assert orders is not None
    end = SCORE_AS_OF + timedelta(days=WINDOW_DAYS)
    bought = orders.filter(pl.col("ordered_at").is_between(SCORE_AS_OF, end, closed="left"))["customer_id"].unique()
    judged = scores.with_columns((~pl.col("customer_id").is_in(bought.implode())).cast(pl.Int8).alias("churned"))
    y, p = judged["churned"].to_numpy(), judged["probability"].to_numpy()
    auc, pr_auc = roc_auc_score(y, p), average_precision_score(y, p)
    holdout = trained.metrics["overall"]
    body = "\n".join([
        (f"`bench/bench_cdnow_asof.py`: the CDNOW example (`examples/cdnow`, 23,570 customers, 69,659 orders, "
         f"1997-01 .. 1998-06). Transactional churn (no purchase in the next {WINDOW_DAYS} days) trained with "
         f"`crmscore train churn --mode transactional --as-of {TRAIN_AS_OF:%Y-%m-%d}` and scored with "
         f"`crmscore score churn --as-of {SCORE_AS_OF:%Y-%m-%d}`. Machine: {context}."),
        "",
        "| what | rows | positive rate | ROC-AUC | PR-AUC |",
        "|---|---|---|---|---|",
        (f"| training holdout (newest cutoff whose window ends by {TRAIN_AS_OF:%Y-%m-%d}) | "
         f"{int(holdout['rows']):,} | {holdout['positive_rate']:.3f} | {holdout['roc_auc']:.4f} | "
         f"{holdout['pr_auc']:.4f} |"),
        (f"| scored {SCORE_AS_OF:%Y-%m-%d}, judged on orders in [{SCORE_AS_OF:%Y-%m-%d}, {end:%Y-%m-%d}) | "
         f"{judged.height:,} | {y.mean():.3f} | {auc:.4f} | {pr_auc:.4f} |"),
        "",
        (f"Scored {run.rows:,} of {run.entities:,} customers (feature snapshot "
         f"{', '.join(f'{t:%Y-%m-%d}' for t in run.feature_timestamps)}); training took {train_seconds:.0f} s "
         f"(features built at its cutoffs included), scoring {score_seconds:.0f} s (its snapshot built first)."),
    ])
    print(body)
    write_section(f"CDNOW as of {SCORE_AS_OF:%Y-%m-%d}", body)


if __name__ == "__main__":
    main()
