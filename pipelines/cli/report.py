"""``crmscore report``: the CRM report page (``pipelines.report``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from crmdata.errors import CrmscoreError
from pipelines.cli.common import console, err_console, handle_errors, workspace

# pipelines.report imports DuckDB, polars and (to log) MLflow: inside the command.

app = typer.Typer()


def _date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CrmscoreError(f"--as-of {value!r}: expected a date as YYYY-MM-DD") from None


@app.command("report")
@handle_errors
def report(
    as_of: Annotated[str | None, typer.Option("--as-of", help="Count events before this date (YYYY-MM-DD, UTC). "
                                              "Default: the day after the lake's last event.")] = None,
    months: Annotated[int, typer.Option(min=1, max=120, help="Months shown, ending with the report date's.")] = 12,
    window: Annotated[int, typer.Option("--window", min=1, help="Transactional churn: a customer with no order "
                                        "within this many days is lost.")] = 90,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the page here (and the JSON beside it, "
                                             ".json).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report's numbers as JSON.")] = False,
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not log the report to MLflow.")] = False,
) -> None:
    """The CRM report: KPIs, funnel, value tiers, satisfaction and a monitor of past scores.

    One self-contained HTML page plus the same numbers as JSON (served at GET /report).

    Written to HOME/reports/latest.html and latest.json (and --out), and logged to MLflow
    (experiment crm-report). docs/report.md defines every figure.
    """
    import time

    from pipelines.report.build import build_report, log_report, write_report

    started = time.perf_counter()
    ws = workspace()
    result = build_report(ws, _date(as_of), months=months, window_days=window)
    page, data, written = write_report(ws, result, out)
    run_id = None if no_mlflow else log_report(result, page, data)
    seconds = time.perf_counter() - started
    if as_json:
        typer.echo(data)
    else:
        console.print(f"report as of {result.as_of:%Y-%m-%d} ({seconds:.1f}s): open {written[0].as_uri()}",
                      highlight=False)
        for path in written[1:]:
            console.print(f"  also {path}", highlight=False)
        if run_id:
            console.print(f"  MLflow run {run_id} (experiment crm-report)", highlight=False)
    for alert in result.alerts:
        err_console.print(f"[red]monitor:[/red] {alert.message}", highlight=False)
