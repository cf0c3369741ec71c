"""``crmscore pipeline run``: the end-to-end pipeline (``pipelines.pipeline``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from crmdata.errors import CrmscoreError
from pipelines.cli.common import console, err_console, handle_errors, workspace

if TYPE_CHECKING:
    from pipelines.pipeline import StepRecord

# pipelines.pipeline imports every step's library (polars, Feast, ...): inside the
# command, so that `crmscore --help` stays fast.

app = typer.Typer(name="pipeline", help="The end-to-end pipeline, resumable step by step.", no_args_is_help=True)


@app.command("run")
@handle_errors
def pipeline_run(
    world: Annotated[int | None, typer.Option(min=10, help="Generate a synthetic world of N customers.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic world.")] = 1,
    lake: Annotated[Path | None, typer.Option(help="Use an existing contract lake (copied into HOME/lake).")] = None,
    mapping: Annotated[Path | None, typer.Option(help="Import your own files with this mapping.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun steps that already finished.")] = False,
    profile: Annotated[str, typer.Option(help="Feature store profile: local or redis.")] = "local",
    as_json: Annotated[bool, typer.Option("--json", help="Print the step records as JSON.")] = False,
) -> None:
    """generate/import → validate → features → apply → materialize → train → score → push."""
    from pipelines.pipeline import Source, records_json, run_pipeline

    if sum(x is not None for x in (world, lake, mapping)) > 1:
        raise CrmscoreError("give one source: --world N, --lake DIR or --mapping FILE")
    if world is None and lake is None and mapping is None:
        lake = workspace().lake  # rerun on the workspace's own lake
    source = Source(world_customers=world, seed=seed, lake=lake, mapping=mapping)

    def progress(record: StepRecord) -> None:
        if not as_json:
            err_console.print(f"[bold]{record.name}[/bold]: {record.status} ({record.seconds:.1f}s) {record.detail}",
                              highlight=False)

    records = run_pipeline(workspace(), source, force=force, profile=profile, on_step=progress)
    if as_json:
        typer.echo(records_json(records))
        return
    table = Table(title=f"pipeline: {source.describe()}")
    # Short columns are never broken (80-column terminals); the detail wraps between words.
    for header in ("step", "status", "seconds", "peak GB"):
        table.add_column(header, no_wrap=True, justify="left" if header in ("step", "status") else "right")
    table.add_column("detail", overflow="fold")
    for r in records:
        table.add_row(r.name, r.status, f"{r.seconds:.1f}", f"{r.peak_rss_gb:.1f}" if r.peak_rss_gb else "", r.detail)
    peak = max((r.peak_rss_gb or 0.0 for r in records), default=0.0)
    table.add_row("total", "", f"{sum(r.seconds for r in records):.1f}", f"{peak:.1f}" if peak else "", "")
    console.print(table)
