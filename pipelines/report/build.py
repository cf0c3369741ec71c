"""Build the report, write it (atomically) and log it to MLflow.

``build_report`` computes every section; ``write_report`` renders the page and writes
the page and the JSON to the workspace's stable path (``serving.report.latest_html``:
what ``GET /report`` serves) and to ``--out``; ``log_report`` keeps both in the MLflow
experiment ``crm-report`` (one run per report).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.lake import event_span
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from pipelines.report import kpis, scores
from pipelines.report.model import DEFAULT_MONTHS, DEFAULT_WINDOW_DAYS, Grid, Report, Section
from pipelines.report.render import render
from pipelines.scoring.table import partitions
from serving.report import latest_html, latest_json

log = logging.getLogger(__name__)

EXPERIMENT = "crm-report"
#: How long after the lake's last event a scoring run may be dated: pipelines.scoring.job's
#: SCORE_AFTER_LAST_EVENT (not imported: pipelines.scoring.job loads Feast, ~15 s).
SCORING_SLACK = timedelta(days=7)
#: The lead model's score table and its grade column, for the funnel's open leads by grade.
LEAD_TASK = "lead"


def default_as_of(lake: Path, scores_dir: Path | None = None) -> datetime:
    """Midnight after the lake's last event (every event counts), or the newest scoring run's
    date when that is later but within a week of the last event: ``crmscore score`` dates its
    runs at the feature grid's newest snapshot, the Monday after the last event."""
    from training.tasks import TASKS

    last = event_span(lake)[1]
    as_of = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    if scores_dir is not None:
        dates = [scores.partition_date(p) for task in TASKS for p in partitions(scores_dir, task)]
        recent = [d for d in dates if as_of < d <= last + SCORING_SLACK]
        if recent:
            as_of = max(recent)
    return as_of


def build_report(ws: Workspace, as_of: datetime | None = None, months: int = DEFAULT_MONTHS,
                 window_days: int = DEFAULT_WINDOW_DAYS, lookup: scores.ModelLookup | None = None,
                 threads: int | None = None) -> Report:
    """Every section of the report as of a date (default: the day after the lake's last event)."""
    if window_days < 1:
        raise CrmscoreError(f"--window must be at least 1 day, got {window_days}")
    first, _ = event_span(ws.lake)
    as_of = as_utc(as_of) if as_of is not None else default_as_of(ws.lake, ws.scores)
    if as_of <= first:
        raise CrmscoreError(f"--as-of {as_of:%Y-%m-%d} is before the data's start: the lake's first event is "
                            f"{first:%Y-%m-%d}")
    grid = Grid.build(as_of, months)
    sql = kpis.LakeSQL(ws.lake, grid, threads)
    report = Report(as_of=as_of, months=grid.labels, mode=kpis.lake_mode(sql), window_days=window_days)
    try:
        started = time.perf_counter()
        customers = kpis.customers_section(sql, window_days)
        report.sections["customers"] = customers
        report.seconds["customers"] = time.perf_counter() - started

        started = time.perf_counter()
        report.sections["value"] = value_section(ws, sql, grid, customers)
        report.seconds["value"] = time.perf_counter() - started

        started = time.perf_counter()
        funnel, open_leads = kpis.funnel_section(sql)
        if open_leads is not None:
            add_open_by_grade(ws, grid, funnel, open_leads)
        report.sections["funnel"] = funnel
        report.seconds["funnel"] = time.perf_counter() - started

        started = time.perf_counter()
        report.sections["satisfaction"] = kpis.satisfaction_section(sql)
        report.seconds["satisfaction"] = time.perf_counter() - started
    finally:
        sql.close()
    started = time.perf_counter()
    report.sections["monitor"], report.alerts = scores.monitor_section(ws, grid, lookup)
    report.seconds["monitor"] = time.perf_counter() - started
    report.seconds = {k: round(v, 3) for k, v in report.seconds.items()}
    return report


def value_section(ws: Workspace, sql: kpis.LakeSQL, grid: Grid, customers: Section) -> Section:
    section = Section(key="value", title="Value")
    section.definitions = {
        **kpis.VALUE_DEFINITIONS,
        "predicted CLV": "the customer-value model's newest run at or before the report date: clv (expected value "
                         "over its horizon) with clv_low–clv_high (its interval), summed by tier",
        "tier": "A–D from the customer-value model (A = highest value)",
        "migration": "customers by tier in the run before and in the newest run: upgraded = a better tier now, "
                     "downgraded = a worse one, same, new = no tier before, lost = no tier now",
        "realized by decile": "the newest run whose horizon has passed: customers in deciles of predicted CLV "
                              "(1 = highest), their mean predicted CLV and mean realized spend (orders within "
                              "the horizon after the run's date)",
    }
    active = {r["month"]: r["active_at_end"] for r in customers.tables.get("monthly", [])}
    monthly, notes = kpis.value_frame(sql, active)
    section.tables["monthly"] = monthly.to_dicts()
    section.notes += notes
    tables, summary, clv_notes = scores.clv_tables(ws, grid)
    section.tables.update(tables)
    section.notes += clv_notes
    if "revenue" in monthly.columns:
        window = monthly.select(pl.col("revenue").sum(), pl.col("orders").sum()).row(0, named=True)
        section.summary = {"revenue": float(window["revenue"]), "orders": int(window["orders"]),
                           "aov": float(window["revenue"] / window["orders"]) if window["orders"] else None}
    section.summary.update(summary)
    section.available = "revenue" in monthly.columns or bool(tables)
    return section


def add_open_by_grade(ws: Workspace, grid: Grid, section: Section, open_leads: pl.DataFrame) -> None:
    from training.tasks import get_task

    runs = scores.dated_partitions(ws.scores, LEAD_TASK, grid.as_of)
    grade = get_task(LEAD_TASK).grade_column or "grade"
    if not runs:
        section.notes.append(f"open leads by grade: no lead score table at or before {grid.as_of:%Y-%m-%d} "
                             f"(`crmscore score {LEAD_TASK}`); {open_leads.height:,} leads are open")
        section.tables["open_by_grade"] = [{"grade": "unscored", "open_leads": open_leads.height}]
        return
    date, path = runs[-1]
    graded = scores.read_partition(path, ["lead_id", grade])
    joined = open_leads.join(graded, on="lead_id", how="left").with_columns(pl.col(grade).fill_null("unscored"))
    counts = joined.group_by(grade).len()
    order = [*(get_task(LEAD_TASK).grades or ([], []))[0], "unscored"]
    rows = []
    for g in order:
        hit = counts.filter(pl.col(grade) == g)
        rows.append({"grade": g, "open_leads": int(hit.get_column("len").sum()) if hit.height else 0})
    section.tables["open_by_grade"] = rows
    section.summary["grades_from"] = f"{date:%Y-%m-%d}"


# --- writing -------------------------------------------------------------------------------------


def atomic_write(path: Path, data: str) -> None:
    """Write ``path`` via a temporary sibling and a rename: a reader sees the old file or the new one."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(ws: Workspace, report: Report, out: Path | None = None) -> tuple[str, str, list[Path]]:
    """Render the page; write page + JSON to the workspace's latest path and to ``out``."""
    page = render(report)
    data = report.model_dump_json(indent=2)
    written = [latest_html(ws), latest_json(ws)]
    atomic_write(written[0], page)
    atomic_write(written[1], data)
    if out is not None:
        json_out = out.with_suffix(".json")
        atomic_write(out, page)
        atomic_write(json_out, data)
        written += [out, json_out]
    return page, data, written


def log_report(report: Report, page: str, data: str) -> str | None:
    """One MLflow run in ``crm-report`` with the page, the JSON and the headline figures."""
    from mlflow.entities import Metric, Param

    from training.registry import configure_mlflow, ensure_experiment

    client = configure_mlflow()
    experiment_id = ensure_experiment(client, EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"report {report.as_of:%Y-%m-%d}",
                            tags={"flagged": str(len(report.alerts))})
    now = int(time.time() * 1000)
    metrics: dict[str, float] = {"alerts": float(len(report.alerts))}
    for key, section in report.sections.items():
        for name, value in section.summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"{key}.{name}"] = float(value)
    metrics.update({f"seconds.{k}": v for k, v in report.seconds.items()})
    params = {"as_of": f"{report.as_of:%Y-%m-%d}", "months": str(len(report.months)),
              "mode": str(report.mode), "window_days": str(report.window_days)}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if not math.isnan(v)],
                     params=[Param(k, v) for k, v in params.items()])
    client.log_text(run.info.run_id, page, "report.html")
    client.log_text(run.info.run_id, data, "report.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
