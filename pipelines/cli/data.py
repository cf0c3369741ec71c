"""``crmscore generate``, ``validate`` and ``import``: where a lake comes from, and its check."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli.common import console, handle_errors, workspace

# The crmdata modules import polars (and pandera): inside the commands, so that
# `crmscore --help` stays fast.

app = typer.Typer()


@app.command()
@handle_errors
def generate(
    customers: Annotated[int, typer.Option(min=10, help="Customers at the end of the history.")] = 20_000,
    leads: Annotated[int | None, typer.Option(min=0, help="Leads (default: customers / 2).")] = None,
    products: Annotated[int, typer.Option(min=5, help="Products in the catalogue.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same world.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Output lake (default: HOME/lake).")] = None,
    export_snapshot: Annotated[Path | None, typer.Option(
        "--export-snapshot", help="Also write a labelled snapshot CSV (one row per active customer at the "
                                  "newest churn cutoff; true probabilities in FILE_truth.csv).")] = None,
) -> None:
    """Generate a synthetic CRM world with ground truth (under OUT/_truth)."""
    from crmdata.synth import WorldConfig, generate_world
    from crmdata.synth.snapshot import export_snapshot as write_snapshot

    config = WorldConfig(
        customers=customers,
        leads=customers // 2 if leads is None else leads,
        products=products,
        seed=seed,
    )
    target = out or workspace().lake
    summary = generate_world(config, target)
    console.print(summary.render())
    if export_snapshot is not None:
        snap = write_snapshot(target, export_snapshot)
        console.print(f"snapshot export → {snap.file}: {snap.rows:,} customers at {snap.as_of:%Y-%m-%d}, "
                      f"churn rate {snap.churn_rate:.3f}; true probabilities → {snap.truth_file}")


@app.command()
@handle_errors
def validate(
    lake: Annotated[Path | None, typer.Argument(help="Lake directory (default: HOME/lake).")] = None,
) -> None:
    """Check a lake against the data contract; exit 1 if any rule is broken."""
    from crmdata.validate import render_problems, validate_lake

    target = lake or workspace().lake
    problems = validate_lake(target)
    render_problems(console, target, problems)
    if any(p.severity == "error" for p in problems):
        raise typer.Exit(1)


@app.command("import")
@handle_errors
def import_(
    mapping: Annotated[Path, typer.Option(help="Mapping YAML (see examples/cdnow/mapping.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Output lake (default: HOME/lake).")] = None,
) -> None:
    """Map your own CSV/parquet files onto the contract, validate, and write the lake."""
    from crmdata.importer import import_lake

    summary = import_lake(mapping, out or workspace().lake)
    console.print(summary.render())
