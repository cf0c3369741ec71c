"""``crmscore train``, ``models list`` and ``promote``: the models of the task registry."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from crmdata.errors import CrmscoreError
from pipelines.cli.common import TaskKey, console, handle_errors, workspace

# The trainers and the registry import MLflow and LightGBM (seconds): inside the
# commands, so that `crmscore --help` stays fast.

app = typer.Typer()

models_app = typer.Typer(name="models", help="Registered models and their aliases.", no_args_is_help=True)
app.add_typer(models_app)


@app.command()
@handle_errors
def train(
    target: Annotated[TaskKey, typer.Argument(help="The task whose model to train.")],
    mode: Annotated[
        str, typer.Option(help="Churn only: subscription, transactional or auto (by the lake's tables).")
    ] = "auto",
    window: Annotated[
        int | None, typer.Option("--window", "--horizon", min=1, help="Label window (customer value: horizon) in "
                                 "days (default: the task's, see training/tasks.py).")
    ] = None,
    tune: Annotated[int, typer.Option(min=0, help="Optuna trials before the final fit (0: none).")] = 0,
    algorithm: Annotated[str, typer.Option(help="nbp only: als (default) or bpr.")] = "als",
    profile: Annotated[str, typer.Option(help="Feature store profile: local or redis.")] = "local",
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Train with only what was observable at this date (YYYY-MM-DD): snapshots at or "
                        "before it, labels whose windows end by it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Train a model, log it to MLflow, register it and promote it if it beats the champion."""
    from pipelines.scoring.inputs import parse_as_of
    from pipelines.train import train_task
    from training.tasks import get_task
    from training.trainer import result_json

    if mode not in ("auto", "subscription", "transactional"):
        raise CrmscoreError(f"--mode {mode!r}: expected subscription, transactional or auto")
    if algorithm not in ("als", "bpr"):
        raise CrmscoreError(f"--algorithm {algorithm!r}: expected als or bpr")
    result = train_task(workspace(), get_task(target.value), mode=mode, window_days=window, tune=tune,
                        algorithm=algorithm, profile=profile, as_of=parse_as_of(as_of, "--as-of"))
    if as_json:
        typer.echo(result_json(result))
        return
    overall = result.metrics.get("overall", result.metrics)
    headline = ", ".join(f"{k}={v:.4f}" for k, v in overall.items()
                         if k in ("roc_auc", "ece", "ndcg_at_10", "normalized_gini", "total_error", "coverage"))
    console.print(
        f"{result.model} version {result.version} ({result.alias}): {headline}\n"
        f"{'promoted' if result.promoted else 'not promoted'}: {result.reason}"
    )


@app.command()
@handle_errors
def backtest(
    target: Annotated[TaskKey, typer.Argument(help="The task to backtest (churn, lead, nbp or clv).")],
    start: Annotated[str | None, typer.Option("--from", help="Oldest origin, YYYY-MM-DD (default: 6 folds).")] = None,
    end: Annotated[str | None, typer.Option(
        "--to", help="Newest origin, YYYY-MM-DD (default: the newest whose window the data covers).")] = None,
    every: Annotated[str, typer.Option(help="Spacing of the origins, e.g. 30d or 4w.")] = "30d",
    window: Annotated[int | None, typer.Option("--window", "--horizon", min=1,
                                               help="Label window (customer value: horizon) in days "
                                                    "(default: the task's).")] = None,
    profile: Annotated[str, typer.Option(help="Feature store profile: local or redis.")] = "local",
    wide: Annotated[bool, typer.Option("--wide", help="Add each fold's seconds, its MLflow run and why it was "
                                                      "skipped (lines over 80 columns).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Rolling-origin backtest: train as of each origin, use the model there, judge the window after it.

    Customer value (clv) is judged on each customer's spend in the --horizon days after
    the origin. An origin the trainer refuses (too little history before it) is a skipped
    fold with its reason; the command fails only if no fold ran.
    """
    from features.grid import parse_every
    from pipelines.backtest import backtest as run_backtest
    from pipelines.scoring.inputs import parse_as_of
    from training.tasks import get_task

    result = run_backtest(workspace(), get_task(target.value), start=parse_as_of(start, "--from"),
                          end=parse_as_of(end, "--to"), every=parse_every(every), window_days=window,
                          profile=profile)
    if as_json:
        typer.echo(result.model_dump_json(indent=2, exclude_none=True))
        return
    table = result.render(wide=wide)
    if wide:
        # Each row at its full width, as `models list --wide` (a console of the table's own width).
        width = console.measure(table, options=console.options.update_width(1_000)).maximum
        Console(width=max(console.width, width), soft_wrap=True).print(table)
    else:
        console.print(table)
        for note in result.notes():
            console.print(note, soft_wrap=False, markup=False, highlight=False)
    # Two lines: a run id is 32 characters, and the summary stays within 80 columns.
    console.print(f"MLflow parent run {result.parent_run_id}:\n{len(result.ran)} nested fold runs, "
                  f"{len(result.folds) - len(result.ran)} skipped, {result.seconds:.0f} s")


@models_app.command("list")
@handle_errors
def models_list(
    wide: Annotated[bool, typer.Option("--wide", help="Add the time and the gate's reason (lines over 80 columns).")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every registered version of the crmscore models, with aliases and headline metric."""
    from training.registry import configure_mlflow, list_versions

    rows = list_versions(configure_mlflow())
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    if not rows:
        console.print("no registered models yet: run `crmscore train`")
        return
    # Fits 80 columns: no cell is ever broken inside a word or number; the gate's reason (a
    # sentence) is for --wide, which prints each row at its full width.
    table = Table(title="registered models", box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("model", "ver", "aliases", "metric", "trained"):
        table.add_column(header, no_wrap=True, justify="right" if header == "ver" else "left")
    if wide:
        table.add_column("gate decision", no_wrap=True)
    for r in rows:
        metric = f"{r.metric} {r.value:.4f}" if r.metric and r.value is not None else ""
        trained = f"{r.created_at:%Y-%m-%d %H:%M}" if wide else f"{r.created_at:%Y-%m-%d}"
        table.add_row(r.model, r.version, "\n".join(r.aliases), metric, trained, *([r.decision or ""] if wide else []))
    if not wide:
        console.print(table)
        return
    # Each row at its full width, wider than the terminal if need be (`print(width=)` is capped
    # at the console's width, hence a console of the table's own width).
    width = console.measure(table, options=console.options.update_width(1_000)).maximum
    Console(width=max(console.width, width), soft_wrap=True).print(table)


@app.command()
@handle_errors
def promote(
    model: Annotated[str, typer.Argument(help="Registered model, e.g. crm-churn.")],
    version: Annotated[str, typer.Argument(help="Version number to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded as a tag).")] = "promoted by hand",
) -> None:
    """Make VERSION the champion of MODEL (serving picks it up on its next reload)."""
    from training.registry import configure_mlflow
    from training.registry import promote as promote_version

    promote_version(configure_mlflow(), model, version, reason, by="person")
    console.print(f"{model} version {version} is now @champion")
