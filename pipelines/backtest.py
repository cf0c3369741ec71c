"""Rolling-origin backtests: ``crmscore backtest churn|lead|nbp|clv``.

One fold per origin T: the task's trainer runs as of T (only what was observable
at T: label windows that end by T, features from events before each cutoff), the
task is used at T with that fold's model, and judged on what happened in the
window after T. That is what the model would have been worth had it been trained
and used on date T.

- A binary task (churn, lead) scores its population at risk at T through the same
  feature service and is judged by ROC-AUC, PR-AUC, ECE and lift, against its rule.
- The recommender (nbp) is given the orders before T, ranks products for the
  customers with an order before T, and is judged by NDCG@10 and hit rate@10 on
  what they bought in the window, against the products most bought before T.
- Customer value (clv) scores the customers signed up before T through the value
  feature service and is judged on what each spent in [T, T + H): normalized Gini,
  decile MAPE, total error and the interval's coverage, against the past-spend rule
  (and the probabilistic peer when its feature is there).

An origin the trainer refuses (too little history before it, a window with one
class, ...: a ``CrmscoreError``) is a skipped fold with its one-line reason; the
other folds still run, and only a backtest in which no fold ran is an error.

Every fold's training run is nested under one parent run (the task's MLflow
experiment, tagged ``backtest``) that holds the table and the plot; a fold
registers no version and moves no alias. Snapshots are added with
``features build --add`` semantics, so folds reuse the ones already built and
the online store's newest snapshot is unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel
from rich import box
from rich.table import Table as RichTable

from crmdata.errors import CrmscoreError
from crmdata.lake import event_span
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from pipelines.train import train_task
from training.tasks import Task

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: Folds when --from is not given.
DEFAULT_FOLDS = 6


class Fold(BaseModel):
    """One origin: its metrics, or why it was skipped. Metrics of the other kind of task stay None."""

    origin: datetime
    rows: int | None = None
    # binary tasks
    positive_rate: float | None = None
    roc_auc: float | None = None
    pr_auc: float | None = None
    ece: float | None = None
    lift_top10: float | None = None
    baseline_roc_auc: float | None = None
    # the recommender
    ndcg_at_10: float | None = None
    popularity_ndcg_at_10: float | None = None
    hit_rate_at_10: float | None = None
    popularity_hit_rate_at_10: float | None = None
    # customer value
    normalized_gini: float | None = None
    decile_mape: float | None = None
    total_error: float | None = None
    coverage: float | None = None
    """The share of customers whose spend lies in the model's interval (nominally 80%)."""
    rule_gini: float | None = None
    peer_gini: float | None = None
    run_id: str | None = None
    seconds: float
    skipped: str | None = None
    """Why the fold did not run (the trainer's or the evaluation's one-line error)."""


@dataclass(frozen=True)
class Column:
    field: str
    header: str
    format: str
    wide_only: bool = False


#: The table's columns per kind of task. The default table fits 80 columns; --wide adds the rest.
BINARY_COLUMNS = (
    Column("rows", "rows", ",d"), Column("positive_rate", "pos. rate", ".3f"), Column("roc_auc", "ROC-AUC", ".4f"),
    Column("pr_auc", "PR-AUC", ".4f"), Column("ece", "ECE", ".4f"), Column("lift_top10", "lift@10%", ".2f"),
    Column("baseline_roc_auc", "rule AUC", ".4f"),
)
RANKING_COLUMNS = (
    Column("rows", "rows", ",d"), Column("ndcg_at_10", "NDCG@10", ".4f"),
    Column("popularity_ndcg_at_10", "popular NDCG@10", ".4f"), Column("hit_rate_at_10", "hit@10", ".4f"),
    Column("popularity_hit_rate_at_10", "popular hit@10", ".4f"),
)
VALUE_COLUMNS = (
    Column("rows", "rows", ",d"), Column("normalized_gini", "Gini", ".4f"), Column("decile_mape", "dec.MAPE", ".3f"),
    Column("total_error", "total err", "+.3f"), Column("coverage", "coverage", ".3f"),
    Column("rule_gini", "rule Gini", ".4f"), Column("peer_gini", "peer Gini", ".4f"),
)
COLUMNS = {"binary": BINARY_COLUMNS, "recommender": RANKING_COLUMNS, "value": VALUE_COLUMNS}
WIDE_COLUMNS = (Column("seconds", "fold s", ".0f", wide_only=True), Column("run_id", "fold run", "s", wide_only=True))
#: What the plot draws, per kind: field → label.
PLOTTED = {"binary": {"roc_auc": "ROC-AUC", "baseline_roc_auc": "rule ROC-AUC", "pr_auc": "PR-AUC"},
           "recommender": {"ndcg_at_10": "NDCG@10", "popularity_ndcg_at_10": "popularity NDCG@10",
                           "hit_rate_at_10": "hit rate@10"},
           "value": {"normalized_gini": "normalized Gini", "rule_gini": "past-spend rule Gini",
                     "peer_gini": "peer Gini", "coverage": "interval coverage"}}


class Backtest(BaseModel):
    task: str
    kind: str
    """``binary``, ``recommender`` or ``value`` (which metrics the folds carry)."""
    window_days: int
    every_days: int
    folds: list[Fold]
    parent_run_id: str
    seconds: float

    @property
    def ran(self) -> list[Fold]:
        return [f for f in self.folds if f.skipped is None]

    def render(self, wide: bool = False) -> RichTable:
        """The folds as a table: 80 columns by default (a skipped fold's reason is in
        ``notes``); ``wide`` adds the fold's seconds, its run and the reason in the row."""
        skipped = len(self.folds) - len(self.ran)
        title = (f"{self.task} backtest: {len(self.folds)} folds"
                 f"{f' ({skipped} skipped)' if skipped else ''}, {self.window_days}-day windows")
        grid = RichTable(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                         collapse_padding=True)
        columns = COLUMNS[self.kind] + (WIDE_COLUMNS if wide else ())
        grid.add_column("origin", no_wrap=True)
        for c in columns:
            grid.add_column(c.header, justify="left" if c.field == "run_id" else "right", no_wrap=True)
        if wide:
            grid.add_column("skipped because", no_wrap=True)
        for f in self.folds:
            cells = [format(v, c.format) if (v := getattr(f, c.field)) is not None else "" for c in columns]
            if f.skipped is not None:
                cells[0] = "skipped"
            grid.add_row(f"{f.origin:%Y-%m-%d}", *cells, *([f.skipped or ""] if wide else []))
        return grid

    def notes(self) -> list[str]:
        """One line per skipped fold: its origin and why (the default table has no room for it)."""
        return [f"skipped {f.origin:%Y-%m-%d}: {f.skipped}" for f in self.folds if f.skipped is not None]


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


def attempt(origin: datetime, run: Callable[[datetime], Fold]) -> Fold:
    """``run(origin)``, or a skipped fold carrying the first line of its ``CrmscoreError``.

    Only a ``CrmscoreError`` (a refusal the user can act on: too little history before
    the origin, one class in its window) skips a fold; anything else is a bug and stops
    the backtest.
    """
    started = time.perf_counter()
    try:
        return run(origin)
    except CrmscoreError as exc:
        reason = (str(exc).strip().splitlines() or ["no reason given"])[0]
        log.warning("fold %s skipped: %s", f"{origin:%Y-%m-%d}", reason)
        return Fold(origin=origin, skipped=reason, seconds=round(time.perf_counter() - started, 1))


def none_ran(task: str, folds: list[Fold]) -> str:
    """The error of a backtest in which every fold was skipped: each reason once, with its origins."""
    by_reason: dict[str, list[str]] = {}
    for f in folds:
        by_reason.setdefault(f.skipped or "", []).append(f"{f.origin:%Y-%m-%d}")
    reasons = "; ".join(f"{', '.join(dates)}: {reason}" for reason, dates in by_reason.items())
    return f"no fold of the {task} backtest ran ({len(folds)} skipped): {reasons}"


def _binary_fold(ws: Workspace, task: Task, origin: datetime, window: int, profile: str) -> Fold:
    """Train as of the origin, score its population at risk, judge the window after it."""
    from sklearn.metrics import roc_auc_score

    from training.frames import ensure_snapshots, labelled_frame
    from training.metrics import evaluate
    from training.model import load_run_model

    started = time.perf_counter()
    hooks = task.backtest_hooks()
    trained = train_task(ws, task, as_of=origin, window_days=window, profile=profile, register=False)
    model = load_run_model(trained.run_id)
    labels = hooks.outcomes(ws.lake, origin, window, model.spec)
    ensure_snapshots(ws, [origin])
    frame = labelled_frame(ws, task.feature_service, labels, profile)
    y = frame["label"].to_numpy(dtype=int)
    if len(np.unique(y)) < 2:
        raise CrmscoreError(f"the {window}-day window after {origin:%Y-%m-%d} has only one class ({len(y)} rows)")
    overall = evaluate(y, model.predict_proba(frame))["overall"]
    return Fold(origin=origin, rows=len(y), positive_rate=overall["positive_rate"], roc_auc=overall["roc_auc"],
                pr_auc=overall["pr_auc"], ece=overall["ece"], lift_top10=overall["lift_top10"],
                baseline_roc_auc=float(roc_auc_score(y, hooks.baseline_scores(frame, model.spec))),
                run_id=trained.run_id, seconds=round(time.perf_counter() - started, 1))


def _ranking_fold(ws: Workspace, task: Task, origin: datetime, window: int) -> Fold:
    """Fit the recommender as of the origin, rank for the customers at the origin, judge the window after it."""
    from training.nbp.evaluate import evaluate_at_origin
    from training.nbp.interactions import read_lake
    from training.nbp.persist import load_run_recommender

    started = time.perf_counter()
    trained = train_task(ws, task, as_of=origin, window_days=window, register=False,
                         extra_tags={"trained_as_of": f"{origin:%Y-%m-%d}"})
    metrics = evaluate_at_origin(load_run_recommender(trained.run_id), read_lake(ws.lake), origin, window)
    return Fold(origin=origin, rows=int(metrics.pop("rows")), **metrics, run_id=trained.run_id,
                seconds=round(time.perf_counter() - started, 1))


def value_fold_metrics(actual: np.ndarray, predicted: pd.DataFrame, frame: pd.DataFrame,
                       horizon_days: int) -> dict[str, float]:
    """A customer-value fold's metrics: the model's (``predicted``: ``ValueModel.predict`` of
    ``frame``) on the spend over the horizon, the past-spend rule's Gini and, when the frame has
    the peer's feature, the peer's — the comparators exactly as training judges them."""
    from training.value.metrics import evaluate_value, normalized_gini
    from training.value.train import past_spend_rule, peer_spend

    actual = np.asarray(actual, dtype=float)
    if not actual.sum() > 0:
        raise CrmscoreError(f"orders: the {horizon_days} days after the origin have no spend "
                            f"({len(actual)} customers)")
    model = evaluate_value(actual, predicted["clv"].to_numpy(), predicted["clv_low"].to_numpy(),
                           predicted["clv_high"].to_numpy())
    peer = peer_spend(frame, horizon_days)
    return {"rows": len(actual), **{k: model[k] for k in ("normalized_gini", "decile_mape", "total_error",
                                                          "coverage")},
            "rule_gini": normalized_gini(actual, past_spend_rule(frame, horizon_days)),
            **({} if peer is None else {"peer_gini": normalized_gini(actual, peer)})}


def _value_fold(ws: Workspace, task: Task, origin: datetime, horizon: int, profile: str) -> Fold:
    """Train customer value as of the origin, score the customers signed up before it, judge
    their spend in the horizon after it."""
    from features.labels import value_labels
    from training.frames import ensure_snapshots, labelled_frame
    from training.value.scorer import load_run_value_model

    started = time.perf_counter()
    trained = train_task(ws, task, as_of=origin, window_days=horizon, profile=profile, register=False)
    model = load_run_value_model(trained.run_id)
    ensure_snapshots(ws, [origin])
    frame = labelled_frame(ws, task.feature_service, value_labels(ws.lake, [origin], window_days=horizon), profile)
    metrics = value_fold_metrics(frame["label"].to_numpy(dtype=float), model.predict(frame), frame, horizon)
    return Fold(origin=origin, **metrics, run_id=trained.run_id, seconds=round(time.perf_counter() - started, 1))


def backtest(ws: Workspace, task: Task, start: datetime | None = None, end: datetime | None = None,
             every: timedelta = timedelta(days=30), window_days: int | None = None,
             profile: str = "local") -> Backtest:
    """Train, use and judge the task at each origin; log the folds under one parent run.

    Raises ``CrmscoreError`` (after logging the parent run) when every fold was skipped.
    """
    import matplotlib.pyplot as plt
    import mlflow

    from training.registry import configure_mlflow, ensure_experiment

    if task.scorer == "binary" and task.backtest_hooks() is None:
        raise CrmscoreError(f"{task.title} ({task.key}) declares no backtest hooks in training/tasks.py")
    window = window_days or task.window_days
    first, last = event_span(ws.lake)
    origins = fold_origins(first, last, window, every, start, end)

    def run(origin: datetime) -> Fold:
        if task.scorer == "recommender":
            return _ranking_fold(ws, task, origin, window)
        if task.scorer == "value":
            return _value_fold(ws, task, origin, window, profile)
        return _binary_fold(ws, task, origin, window, profile)

    started = time.perf_counter()
    client = configure_mlflow()
    ensure_experiment(client, task.model_name)
    plotted = PLOTTED[task.scorer]
    folds: list[Fold] = []
    with mlflow.start_run(run_name=f"backtest {task.key} {origins[0]:%Y-%m-%d}..{origins[-1]:%Y-%m-%d}",
                          tags={"backtest": "true", "task": task.key}) as parent:
        mlflow.log_params({"window_days": window, "every_days": every.days, "folds": len(origins)})
        for step, origin in enumerate(origins):
            fold = attempt(origin, run)
            folds.append(fold)
            if fold.skipped is not None:
                mlflow.set_tag(f"skipped.{origin:%Y-%m-%d}", fold.skipped)
                continue
            metrics = fold.model_dump(exclude={"origin", "run_id", "seconds", "skipped"}, exclude_none=True)
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
            headline = next(iter(plotted))
            log.info("fold %s: %s %.4f on %d rows in %.0fs", f"{origin:%Y-%m-%d}", headline,
                     getattr(fold, headline), fold.rows, fold.seconds)
        result = Backtest(task=task.key, kind=task.scorer, window_days=window, every_days=every.days, folds=folds,
                          parent_run_id=parent.info.run_id, seconds=round(time.perf_counter() - started, 1))
        mlflow.log_dict(result.model_dump(mode="json", exclude_none=True), "backtest.json")
        if not result.ran:
            raise CrmscoreError(none_ran(task.key, folds))
        figure, axes = plt.subplots(figsize=(8, 4))
        dates = [f.origin for f in result.ran]
        for name, label in plotted.items():
            if all(getattr(f, name) is None for f in result.ran):
                continue  # e.g. the peer's Gini when the frames had no peer feature
            axes.plot(dates, [getattr(f, name) for f in result.ran], marker="o", label=label)
        axes.set_title(f"{task.key}: metrics by origin ({window}-day windows)")
        axes.legend()
        figure.autofmt_xdate()
        mlflow.log_figure(figure, "plots/backtest.png")
        plt.close(figure)
    return result
