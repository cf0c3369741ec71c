"""Rolling-origin backtests of a binary task: ``crmscore backtest churn|lead``.

One fold per origin T: the task's trainer runs as of T (only what was observable
at T: label windows that end by T, features from events before each cutoff), the
population at risk at T is scored with that fold's model through the same feature
service, and the scores are judged on what happened in the window after T. That
is what the model would have been worth had it been trained and used on date T.

Every fold's training run is nested under one parent run (the task's MLflow
experiment, tagged ``backtest``) that holds the table and the plot; a fold
registers no version and moves no alias. Snapshots are added with
``features build --add`` semantics, so folds reuse the ones already built and
the online store's newest snapshot is unchanged.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import numpy as np
from pydantic import BaseModel
from rich.table import Table as RichTable

from crmdata.errors import CrmscoreError
from crmdata.lake import event_span
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from pipelines.train import train_task
from training.tasks import Task

log = logging.getLogger(__name__)

#: Folds when --from is not given.
DEFAULT_FOLDS = 6


class Fold(BaseModel):
    origin: datetime
    rows: int
    positive_rate: float
    roc_auc: float
    pr_auc: float
    ece: float
    lift_top10: float
    baseline_roc_auc: float
    run_id: str
    seconds: float


class Backtest(BaseModel):
    task: str
    window_days: int
    every_days: int
    folds: list[Fold]
    parent_run_id: str
    seconds: float

    def render(self) -> RichTable:
        grid = RichTable(title=f"{self.task} backtest: {len(self.folds)} folds, {self.window_days}-day windows",
                         title_justify="left")
        grid.add_column("origin", no_wrap=True, min_width=10)
        for name in ("rows", "pos. rate", "ROC-AUC", "PR-AUC", "ECE", "lift@10%", "rule AUC"):
            grid.add_column(name, justify="right")
        for f in self.folds:
            grid.add_row(f"{f.origin:%Y-%m-%d}", f"{f.rows:,}", f"{f.positive_rate:.3f}", f"{f.roc_auc:.4f}",
                         f"{f.pr_auc:.4f}", f"{f.ece:.4f}", f"{f.lift_top10:.2f}", f"{f.baseline_roc_auc:.4f}")
        return grid


def fold_origins(first: datetime, last: datetime, window_days: int, every: timedelta,
                 start: datetime | None, end: datetime | None) -> list[datetime]:
    """Origins every ``every`` back from ``end`` (default: the newest whose window the data
    covers) down to ``start`` (default: DEFAULT_FOLDS origins)."""
    newest = last - timedelta(days=window_days)
    end = newest if end is None else as_utc(end)
    if end > newest:
        raise CrmscoreError(f"--to {end:%Y-%m-%d}: its {window_days}-day window ends after the data's last event "
                            f"({last:%Y-%m-%d}); the newest possible origin is {newest:%Y-%m-%d}")
    start = end - (DEFAULT_FOLDS - 1) * every if start is None else as_utc(start)
    if start <= first:
        raise CrmscoreError(f"--from {start:%Y-%m-%d} is not after the data's first event ({first:%Y-%m-%d})")
    origins = []
    origin = end
    while origin >= start:
        origins.append(origin)
        origin -= every
    return sorted(origins)


def backtest(ws: Workspace, task: Task, start: datetime | None = None, end: datetime | None = None,
             every: timedelta = timedelta(days=30), window_days: int | None = None,
             profile: str = "local") -> Backtest:
    """Train, score and judge the task at each origin; log the folds under one parent run."""
    import matplotlib.pyplot as plt
    import mlflow
    from sklearn.metrics import roc_auc_score

    from training.frames import ensure_snapshots, labelled_frame
    from training.metrics import evaluate
    from training.model import load_run_model
    from training.registry import configure_mlflow, ensure_experiment

    hooks = task.backtest_hooks()
    if hooks is None:
        raise CrmscoreError(f"backtest covers the binary tasks; {task.title} ({task.key}) has no backtest yet")
    window = window_days or task.window_days
    first, last = event_span(ws.lake)
    origins = fold_origins(first, last, window, every, start, end)
    started = time.perf_counter()
    client = configure_mlflow()
    ensure_experiment(client, task.model_name)
    folds: list[Fold] = []
    with mlflow.start_run(run_name=f"backtest {task.key} {origins[0]:%Y-%m-%d}..{origins[-1]:%Y-%m-%d}",
                          tags={"backtest": "true", "task": task.key}) as parent:
        mlflow.log_params({"window_days": window, "every_days": every.days, "folds": len(origins)})
        for step, origin in enumerate(origins):
            fold_started = time.perf_counter()
            trained = train_task(ws, task, as_of=origin, window_days=window, profile=profile, register=False)
            model = load_run_model(trained.run_id)
            labels = hooks.outcomes(ws.lake, origin, window, model.spec)
            ensure_snapshots(ws, [origin])
            frame = labelled_frame(ws, task.feature_service, labels, profile)
            y = frame["label"].to_numpy(dtype=int)
            if len(np.unique(y)) < 2:
                raise CrmscoreError(f"fold {origin:%Y-%m-%d}: the window after it has only one class "
                                    f"({len(y)} rows): choose other origins with --from/--to")
            overall = evaluate(y, model.predict_proba(frame))["overall"]
            fold = Fold(origin=origin, rows=len(y), positive_rate=overall["positive_rate"],
                        roc_auc=overall["roc_auc"], pr_auc=overall["pr_auc"], ece=overall["ece"],
                        lift_top10=overall["lift_top10"],
                        baseline_roc_auc=float(roc_auc_score(y, hooks.baseline_scores(frame, model.spec))),
                        run_id=trained.run_id, seconds=round(time.perf_counter() - fold_started, 1))
            folds.append(fold)
            mlflow.log_metrics({k: float(getattr(fold, k)) for k in
                                ("rows", "positive_rate", "roc_auc", "pr_auc", "ece", "lift_top10",
                                 "baseline_roc_auc")}, step=step)
            log.info("fold %s: ROC-AUC %.4f (rule %.4f) on %d rows in %.0fs", f"{origin:%Y-%m-%d}", fold.roc_auc,
                     fold.baseline_roc_auc, fold.rows, fold.seconds)
        result = Backtest(task=task.key, window_days=window, every_days=every.days, folds=folds,
                          parent_run_id=parent.info.run_id, seconds=round(time.perf_counter() - started, 1))
        mlflow.log_dict(result.model_dump(mode="json"), "backtest.json")
        figure, axes = plt.subplots(figsize=(8, 4))
        dates = [f.origin for f in folds]
        for name, label in (("roc_auc", "ROC-AUC"), ("baseline_roc_auc", "rule ROC-AUC"), ("pr_auc", "PR-AUC")):
            axes.plot(dates, [getattr(f, name) for f in folds], marker="o", label=label)
        axes.set_title(f"{task.key}: metrics by origin ({window}-day windows)")
        axes.legend()
        figure.autofmt_xdate()
        mlflow.log_figure(figure, "plots/backtest.png")
        plt.close(figure)
    return result
