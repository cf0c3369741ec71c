"""The snapshot example against a plain LightGBM on the same CSV, and against the truth.

A synthetic world's labelled snapshot export (``crmscore generate --export-snapshot``)
is imported with ``examples/snapshot/mapping.yaml`` and churn is trained on its
``churn_labels`` (one date, so a stratified split by entity: a cross-sectional
model). The reference is what an analyst would do with the CSV alone: LightGBM on
its columns, with the same split (``training.trainer.split_by_entity`` on the same
customers and labels), early stopping on the same validation fold. Both are
judged on the same holdout customers, as are the world's true probabilities.
Writes the "snapshot example" section of BENCHMARKS.md.

    .venv/bin/python bench/bench_snapshot.py [--customers 50000]
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

ROOT = Path("/tmp/crmscore-bench/snapshot")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "snapshot" / "mapping.yaml"
CATEGORICAL = ("contract", "segment", "country", "industry")


def hanley_mcneil(auc: float, labels: object) -> float:
    """The standard error of an AUC on these labels (Hanley & McNeil, 1982)."""
    import numpy as np

    y = np.asarray(labels)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives)
    return float(np.sqrt(variance))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    context = machine()

    import lightgbm as lgb
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from crmdata.importer import import_lake
    from crmdata.synth import WorldConfig, generate_world
    from crmdata.synth.snapshot import export_snapshot
    from crmdata.workspace import Workspace

    shutil.rmtree(ROOT, ignore_errors=True)
    generate_world(WorldConfig(customers=args.customers, leads=0, products=20, seed=args.seed), ROOT / "world")
    export = export_snapshot(ROOT / "world", ROOT / "export" / "telco.csv")
    shutil.copy(EXAMPLE, export.file.parent / "mapping.yaml")

    ws = Workspace(ROOT / "home")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws.home}/mlflow/mlflow.db"
    os.environ["CRMSCORE_HOME"] = str(ws.home)
    from pipelines.train import train_task
    from training.tasks import CHURN
    from training.trainer import DEFAULT_PARAMS, EARLY_STOPPING, MAX_ROUNDS, split_by_entity

    import_lake(export.file.parent / "mapping.yaml", ws.lake)
    started = time.perf_counter()
    trained = train_task(ws, CHURN)
    train_seconds = time.perf_counter() - started

    # The reference: the CSV's own columns, nothing from crmscore but the split.
    csv = pd.read_csv(export.file, dtype={"customer_id": str})
    csv["label"] = (csv["churned"] == "Yes").astype(int)
    for name in CATEGORICAL:
        csv[name] = csv[name].astype("category")
    columns = [c for c in csv.columns if c not in ("customer_id", "snapshot_date", "churned", "label")]
    train, valid, holdout = split_by_entity(csv, "customer_id")
    assert len(holdout) == int(trained.metrics["overall"]["rows"]), "crmscore's holdout is not the same split"
    started = time.perf_counter()
    booster = lgb.train({**DEFAULT_PARAMS, "metric": "auc"}, lgb.Dataset(train[columns], train["label"]),
                        num_boost_round=MAX_ROUNDS, valid_sets=[lgb.Dataset(valid[columns], valid["label"])],
                        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)])
    reference_seconds = time.perf_counter() - started
    plain_auc = roc_auc_score(holdout["label"], booster.predict(holdout[columns]))
    truth = pd.read_csv(export.truth_file, dtype={"customer_id": str})
    oracle = holdout[["customer_id", "label"]].merge(truth, on="customer_id", how="left")
    oracle_auc = roc_auc_score(oracle["label"], oracle["p_churn"])

    ours = trained.metrics["overall"]
    body = "\n".join([
        (f"`bench/bench_snapshot.py --customers {args.customers}`: synthetic world seed {args.seed}, its snapshot "
         f"export (`crmscore generate --export-snapshot`: {export.rows:,} customers active at "
         f"{export.as_of:%Y-%m-%d}, churn rate {export.churn_rate:.3f}) imported with "
         "`examples/snapshot/mapping.yaml` and trained with `crmscore train churn` on its `churn_labels` "
         "(one date: a stratified 60/20/20 split by customer, a cross-sectional model). Plain LightGBM: the "
         "CSV's columns, the same split and early stopping, crmscore's default parameters. Machine: "
         f"{context}."),
        "",
        "Goals: crmscore within 0.02 ROC-AUC of plain LightGBM, and within 0.03 of the true probabilities.",
        "",
        "| model (same holdout customers) | rows | ROC-AUC | crmscore − this |",
        "|---|---|---|---|",
        (f"| crmscore churn (features from the lake, isotonic-calibrated) | {int(ours['rows']):,} | "
        f"{ours['roc_auc']:.4f} | |"),
        f"| plain LightGBM on the CSV | {len(holdout):,} | {plain_auc:.4f} | {ours['roc_auc'] - plain_auc:+.4f} |",
        f"| true probability (p_churn) | {len(holdout):,} | {oracle_auc:.4f} | {ours['roc_auc'] - oracle_auc:+.4f} |",
        "",
        (f"crmscore's ECE {ours['ece']:.4f}, PR-AUC {ours['pr_auc']:.4f}; training took {train_seconds:.0f} s "
         f"(snapshot build, Feast, MLflow logging included), the plain fit {reference_seconds:.1f} s. "
         f"On {len(holdout):,} holdout customers one AUC has a standard error of about {hanley_mcneil(ours['roc_auc'], holdout['label']):.3f} "
         "(Hanley–McNeil); two models judged on the same rows differ by less than that by chance."),
    ])
    print(body)
    write_section("snapshot example", body)


if __name__ == "__main__":
    main()
