"""The report's parts that read score tables: customer-value tiers and the score monitor.

Score tables are the partitions ``pipelines.scoring.table`` writes (one per scoring date,
``_manifest.json`` beside the parquet parts). Only partitions dated at or before the
report's ``as_of`` are read.

The monitor judges every past batch run of a binary model (churn, lead) whose label
window has passed by the report date: the run's scores joined with the labels built by
the same rules training used (``features.labels``) as of the run's date, and compared
with the model's training holdout AUC, read from its MLflow run (``roc_auc``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from crmdata.contract import ORDERS
from crmdata.errors import CrmscoreError
from crmdata.lake import table_path
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from pipelines.report.model import Alert, Grid, Section
from pipelines.scoring.migration import TIER_AFTER, TIER_BEFORE, movement_counts, tier_migration
from pipelines.scoring.table import PARTITION_KEY, partitions, read_manifest
from training.tasks import TASKS, Task

log = logging.getLogger(__name__)

#: The customer-value model's score table (its task key).
CLV_TASK = "clv"
#: The horizon the customer-value model predicts, when the task registry does not say.
DEFAULT_CLV_HORIZON_DAYS = 365
#: A run is flagged when its realized AUC is this much below its model's holdout AUC.
AUC_TOLERANCE = 0.05
#: Past runs the monitor judges per task (the newest ones).
MAX_RUNS = 24


@dataclass(frozen=True)
class ModelRun:
    """What the monitor needs from a model's training run."""

    holdout_auc: float | None = None
    window_days: int | None = None
    mode: str | None = None
    #: The training run's holdout cutoff: a scoring run dated before it was judged on a period
    #: whose outcomes the model was trained or validated on (a backfill), so it is in-sample.
    holdout_cutoff: datetime | None = None


ModelLookup = Callable[[str], ModelRun]


def clv_tiers() -> tuple[str, ...]:
    """The customer-value tiers, best first (read late: training.value loads LightGBM)."""
    from training.value.tiers import TIERS

    return tuple(TIERS)


def partition_date(path: Path) -> datetime:
    return datetime.strptime(path.name.removeprefix(f"{PARTITION_KEY}="), "%Y-%m-%d").replace(tzinfo=UTC)


def dated_partitions(scores: Path, task: str, as_of: datetime) -> list[tuple[datetime, Path]]:
    """The task's partitions dated at or before ``as_of``, oldest first."""
    out = [(partition_date(p), p) for p in partitions(scores, task)]
    return [(d, p) for d, p in out if d <= as_of]


def read_partition(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise CrmscoreError(f"{path}: a score partition without parquet files")
    return pl.read_parquet(files, columns=columns)


# --- customer value: tiers and migrations ---------------------------------------------------


def clv_tables(ws: Workspace, grid: Grid) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], list[str]]:
    """Predicted CLV by tier (the newest run), the tier migration matrix between the two
    newest runs, and predicted vs realized spend by decile for runs whose horizon has passed."""
    runs = dated_partitions(ws.scores, CLV_TASK, grid.as_of)
    if not runs:
        return {}, {}, [(f"no customer-value scores ({ws.scores / CLV_TASK} has no run at or before "
                        f"{grid.as_of:%Y-%m-%d}): train and score the customer-value model "
                        f"(`crmscore score {CLV_TASK}`) to see predicted CLV, tiers and migrations")]
    notes: list[str] = []
    latest_date, latest_path = runs[-1]
    latest = read_partition(latest_path, ["customer_id", "clv", "clv_low", "clv_high", "tier"])
    tiers = (latest.group_by("tier").agg(pl.len().alias("customers"), pl.col("clv").sum().alias("clv"),
                                         pl.col("clv_low").sum().alias("clv_low"),
                                         pl.col("clv_high").sum().alias("clv_high"),
                                         pl.col("clv").mean().alias("mean_clv")))
    order = pl.DataFrame({"tier": list(clv_tiers())})
    tiers = order.join(tiers, on="tier", how="left").with_columns(pl.col("customers").fill_null(0))
    summary = {"clv_run": f"{latest_date:%Y-%m-%d}", "customers_scored": latest.height,
               "customers_without_tier": int(latest.get_column("tier").null_count()),
               "clv_total": float(latest.get_column("clv").sum()),
               "clv_low_total": float(latest.get_column("clv_low").sum()),
               "clv_high_total": float(latest.get_column("clv_high").sum())}
    tables: dict[str, list[dict[str, Any]]] = {"tiers": tiers.to_dicts()}
    if len(runs) >= 2:
        prev_date, prev_path = runs[-2]
        prev = read_partition(prev_path, ["customer_id", "tier"])
        tables["migration"], moves = migration_matrix(prev, latest.select("customer_id", "tier"))
        summary.update({"migration_from": f"{prev_date:%Y-%m-%d}", **moves})
    else:
        notes.append("one customer-value run only: the tier migration matrix needs two")
    horizon = TASKS[CLV_TASK].window_days if CLV_TASK in TASKS else DEFAULT_CLV_HORIZON_DAYS
    deciles = clv_deciles(ws, runs, grid, horizon)
    if deciles is not None:
        tables["realized_by_decile"] = deciles
    else:
        notes.append(f"predicted vs realized spend: no customer-value run is {horizon} days (its horizon) "
                     "older than the report date yet")
    return tables, summary, notes


def migration_matrix(prev: pl.DataFrame, latest: pl.DataFrame) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows: the tier in the earlier run ('new' = no tier then); columns: the tier in the later
    one ('lost' = no tier now). The movements are ``pipelines.scoring.migration``'s, the rule
    ``score clv`` writes its migration table by (A is best)."""
    tiers = clv_tiers()
    migration = tier_migration(prev, latest, "customer_id", "tier", list(tiers))
    counts = (migration.with_columns(pl.col(TIER_BEFORE).fill_null("new"), pl.col(TIER_AFTER).fill_null("lost"))
              .group_by(TIER_BEFORE, TIER_AFTER).len())
    found = {(b, a): n for b, a, n in counts.iter_rows()}
    rows = [{"from": before, **{after: found.get((before, after), 0) for after in (*tiers, "lost")}}
            for before in (*tiers, "new")]
    return rows, movement_counts(migration)


def clv_deciles(ws: Workspace, runs: list[tuple[datetime, Path]], grid: Grid,
                horizon: int) -> list[dict[str, Any]] | None:
    """The newest run whose horizon has passed: its customers in deciles of predicted CLV
    (1 = highest), predicted vs realized spend (orders in ``[as_of, as_of + horizon)``)."""
    matured = [(d, p) for d, p in runs if d + timedelta(days=horizon) <= grid.as_of]
    orders_path = table_path(ws.lake, ORDERS.name)
    if not matured or not orders_path.exists():
        return None
    date, path = matured[-1]
    scored = read_partition(path, ["customer_id", "clv"])
    end = date + timedelta(days=horizon)
    spend = (pl.scan_parquet(orders_path).filter((pl.col("ordered_at") >= date) & (pl.col("ordered_at") < end))
             .group_by("customer_id").agg(pl.col("amount").sum().alias("realized")).collect())
    frame = (scored.join(spend, on="customer_id", how="left").with_columns(pl.col("realized").fill_null(0.0))
             .with_columns(((pl.col("clv").rank("ordinal", descending=True) - 1) * 10 // pl.len() + 1)
                           .cast(pl.Int32).alias("decile")))
    out = (frame.group_by("decile").agg(pl.len().alias("customers"), pl.col("clv").mean().alias("predicted_mean"),
                                        pl.col("realized").mean().alias("realized_mean"))
           .sort("decile").with_columns(pl.lit(f"{date:%Y-%m-%d}").alias("run")))
    return out.to_dicts()


# --- the score monitor -------------------------------------------------------------------------


def mlflow_lookup() -> ModelLookup:
    """Holdout AUC, label window and churn mode of a training run, from MLflow (cached;
    anything unreadable is unknown rather than an error)."""
    cache: dict[str, ModelRun] = {}

    def lookup(run_id: str) -> ModelRun:
        if run_id not in cache:
            try:
                from training.registry import configure_mlflow

                run = configure_mlflow().get_run(run_id)
                window = run.data.params.get("label_window_days")
                cache[run_id] = ModelRun(holdout_auc=run.data.metrics.get("roc_auc"),
                                         window_days=int(window) if window and window.isdigit() else None,
                                         mode=run.data.params.get("mode") or None,
                                         holdout_cutoff=_parse_time(run.data.params.get("holdout_cutoff")))
            except Exception as exc:  # noqa: BLE001 - a missing run makes the holdout unknown, not the report fail
                log.warning("monitor: training run %s unreadable (%s)", run_id, type(exc).__name__)
                cache[run_id] = ModelRun()
        return cache[run_id]

    return lookup


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def realized_labels(ws: Workspace, task: Task, as_of: datetime, window_days: int, mode: str | None) -> pl.DataFrame:
    """The run's population's outcomes in the window after it, by the rules training uses."""
    from features.labels import LABEL, churn_labels, lead_conversion_labels

    if task.entity == "lead":
        frame = lead_conversion_labels(ws.lake, [as_of], window_days=window_days)
    else:
        chosen = mode if mode in ("subscription", "transactional") else "auto"
        frame = churn_labels(ws.lake, [as_of], window_days=window_days, mode=chosen)  # type: ignore[arg-type]
    return frame.select(task.key_column, LABEL)


def judge_run(task: Task, scores: pl.DataFrame, labels: pl.DataFrame) -> dict[str, Any]:
    """ROC-AUC, the observed rate per grade against the predicted mean, and the top grade's lift."""
    from features.labels import LABEL

    grade = task.grade_column or "grade"
    joined = scores.join(labels, on=task.key_column, how="inner").filter(pl.col("probability").is_not_null())
    y = joined.get_column(LABEL).to_numpy()
    p = joined.get_column("probability").to_numpy()
    out: dict[str, Any] = {"judged": joined.height, "positives": int(y.sum()) if y.size else 0,
                           "observed_rate": float(y.mean()) if y.size else None,
                           "predicted_mean": float(p.mean()) if p.size else None, "realized_auc": None}
    if y.size and 0 < y.sum() < y.size:
        from sklearn.metrics import roc_auc_score

        out["realized_auc"] = float(roc_auc_score(y, p))
    labels_order = task.grades[0] if task.grades else sorted(joined.get_column(grade).unique().drop_nulls())
    per = joined.group_by(grade).agg(pl.len().alias("n"), pl.col("probability").mean().alias("predicted_mean"),
                                     pl.col(LABEL).mean().alias("observed_rate"))
    rows = []
    for g in labels_order:
        hit = per.filter(pl.col(grade) == g)
        row = hit.row(0, named=True) if hit.height else {"n": 0, "predicted_mean": None, "observed_rate": None}
        rows.append({"grade": g, "n": row["n"], "predicted_mean": row["predicted_mean"],
                     "observed_rate": row["observed_rate"]})
    out["grades"] = rows
    top = rows[0] if rows else None
    rate = out["observed_rate"]
    out["top_grade"] = top["grade"] if top else None
    out["top_lift"] = (top["observed_rate"] / rate) if top and top["observed_rate"] is not None and rate else None
    return out


def monitor_section(ws: Workspace, grid: Grid, lookup: ModelLookup | None = None) -> tuple[Section, list[Alert]]:
    section = Section(key="monitor", title="Score monitor")
    section.definitions = {
        "runs": "every batch scoring run (score table partition) of a binary model dated at or before the report "
                "date whose label window (the model's, from its training run) has passed by then",
        "realized": "the run's scores joined with what happened in the window after its date, by the same label "
                    "rules training uses (churn: no active subscription / no order in the window; lead: converted "
                    "in the window); entities without a label (e.g. no longer in the population) are left out",
        "realized AUC": "ROC-AUC of the run's probabilities against those outcomes",
        "holdout AUC": "the model version's ROC-AUC on its training holdout (MLflow metric roc_auc)",
        "flag": f"realized AUC < holdout AUC − {AUC_TOLERANCE} (red here; alerts[] in the JSON)",
        "per grade": "customers/leads per band or grade, their mean predicted probability and the observed rate",
        "lift": "observed rate of the best grade (churn: high band, leads: A) ÷ the run's observed rate",
        "in sample": "the run is dated before its model's training holdout cutoff: the model was trained or "
                     "validated on outcomes of that period (a backfilled run), so its realized AUC is optimistic",
        "value deciles": "customer value: predicted vs realized spend by decile (in the value section)",
    }
    lookup = lookup or mlflow_lookup()
    runs: list[dict[str, Any]] = []
    grades: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    alerts: list[Alert] = []
    for task in TASKS.values():
        if task.scorer != "binary":
            continue
        for date, path in dated_partitions(ws.scores, task.key, grid.as_of)[-MAX_RUNS:]:
            try:
                manifest = read_manifest(path)
            except (CrmscoreError, ValueError) as exc:
                section.notes.append(f"{task.key} {date:%Y-%m-%d}: skipped ({str(exc)[:120]})")
                continue
            info = lookup(manifest.model_run_id) if manifest.model_run_id else ModelRun()
            window = info.window_days or task.window_days
            matures = date + timedelta(days=window)
            base = {"task": task.key, "as_of": f"{date:%Y-%m-%d}", "model_version": manifest.model_version,
                    "window_days": window, "scored": manifest.rows}
            if matures > grid.as_of:
                pending.append({**base, "matures": f"{matures:%Y-%m-%d}"})
                continue
            scores = read_partition(path, [task.key_column, "probability", task.grade_column or "grade"])
            labels = realized_labels(ws, task, date, window, info.mode)
            if labels.height == 0:
                section.notes.append(f"{task.key} {date:%Y-%m-%d}: no outcomes (its window ends after the lake's "
                                     "last event)")
                continue
            judged = judge_run(task, scores, labels)
            flagged = (info.holdout_auc is not None and judged["realized_auc"] is not None
                       and judged["realized_auc"] < info.holdout_auc - AUC_TOLERANCE)
            runs.append({**base, "judged": judged["judged"], "positives": judged["positives"],
                         "observed_rate": judged["observed_rate"], "predicted_mean": judged["predicted_mean"],
                         "realized_auc": judged["realized_auc"], "holdout_auc": info.holdout_auc,
                         "top_grade": judged["top_grade"], "top_lift": judged["top_lift"],
                         "in_sample": info.holdout_cutoff is not None and date < info.holdout_cutoff,
                         "flagged": flagged})
            grades += [{"task": task.key, "as_of": base["as_of"], **g} for g in judged["grades"]]
            if flagged:
                alerts.append(Alert(task=task.key, as_of=base["as_of"], model_version=manifest.model_version,
                                    realized_auc=judged["realized_auc"], holdout_auc=float(info.holdout_auc or 0),
                                    message=f"{task.key} scores of {base['as_of']} (v{manifest.model_version}): "
                                            f"realized AUC {judged['realized_auc']:.3f} < holdout "
                                            f"{info.holdout_auc:.3f} − {AUC_TOLERANCE}"))
            if info.holdout_auc is None:
                section.notes.append(f"{task.key} {base['as_of']}: the model's holdout AUC is unknown (no MLflow "
                                     "training run), so the run cannot be flagged")
    section.tables = {"runs": runs, "grades": grades, "pending": pending}
    if not runs:
        section.notes.insert(0, "no past scoring run has a matured label window yet"
                             + (f" ({len(pending)} waiting)" if pending else
                                " (score with `crmscore score` and come back after the window)"))
    section.summary = {"runs_judged": len(runs), "runs_waiting": len(pending), "flagged": len(alerts)}
    if runs:
        aucs = [r["realized_auc"] for r in runs if r["realized_auc"] is not None]
        section.summary["mean_realized_auc"] = float(np.mean(aucs)) if aucs else None
    return section, alerts
