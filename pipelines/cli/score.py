"""``crmscore score`` and ``crmscore push-scores``: batch scoring and publishing."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from crmdata.errors import CrmscoreError
from pipelines.cli.common import ScoreTarget, console, err_console, handle_errors, workspace

if TYPE_CHECKING:
    from pipelines.scoring.table import RunManifest

# pipelines.scoring imports polars, Feast and MLflow (seconds): inside the commands, so
# that `crmscore --help` stays fast.

app = typer.Typer()


class EngineName(StrEnum):
    local = "local"
    spark = "spark"


class ReasonsChoice(StrEnum):
    all = "all"
    top = "top"
    none = "none"


AsOfOption = Annotated[
    str | None,
    typer.Option("--as-of", help="Score as of this date (YYYY-MM-DD, UTC). Default: the newest feature snapshot."),
]
PostgresOption = Annotated[
    str | None,
    typer.Option("--to-postgres", help="Also write the scores to PostgreSQL, e.g. postgresql://user@host:5432/db."),
]
SchemaOption = Annotated[str, typer.Option("--pg-schema", help="PostgreSQL schema of the score tables.")]
ProfileOption = Annotated[str, typer.Option("--profile", help="Feature store profile: local or redis.")]


class _RichProgress:
    """A rich progress bar on stderr (nothing when stderr is not a terminal)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        # One bar per run (`score all` runs three), gone once the run's summary prints.
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, rows: int) -> None:
        self._bar.advance(self._task, rows)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _summary_table(manifest: RunManifest) -> Table:
    table = Table(title=f"{manifest.task} scores as of {manifest.as_of:%Y-%m-%d}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # wraps between words; a word wider than the column is folded
    table.add_row("model", f"{manifest.model_name} v{manifest.model_version} ({manifest.model_alias or 'by number'})")
    table.add_row("rows", f"{manifest.rows:,} of {manifest.entities:,} entities"
                  + (f" ({manifest.no_features:,} without features: scores null)" if manifest.no_features else ""))
    if manifest.feature_timestamps:
        table.add_row("features as of", ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in manifest.feature_timestamps))
    table.add_row("time", f"{manifest.seconds:.1f}s, {manifest.rows_per_second:,.0f} rows/s ({manifest.engine})")
    total = sum(manifest.distribution.grades.values()) or 1
    table.add_row("distribution", "  ".join(f"{g} {n:,} ({n / total:.0%})"
                                           for g, n in manifest.distribution.grades.items()))
    value = manifest.distribution.value
    if "total" in value:
        table.add_row("clv", f"total {value['total']:,.0f}  mean {value['mean']:,.2f}  p10 {value['p10']:,.2f}  "
                             f"p50 {value['p50']:,.2f}  p90 {value['p90']:,.2f} (over {value['horizon_days']:.0f} days)")
    if manifest.migration:
        previous = manifest.migration.get("previous_as_of")
        counts = manifest.migration.get("counts", {})
        table.add_row("tier migration", f"vs {str(previous)[:10] if previous else 'no previous run'}: "
                      + "  ".join(f"{m} {n:,}" for m, n in counts.items()))
    p = manifest.distribution.probability
    if "p50" in p:
        table.add_row("probability", f"mean {p['mean']:.3f}  p10 {p['p10']:.3f}  p50 {p['p50']:.3f}  "
                                     f"p90 {p['p90']:.3f}")
    if manifest.drift and manifest.drift.get("reference_cutoff"):
        drifted = manifest.drift.get("drifted") or []
        table.add_row("drift", f"PSI vs holdout {str(manifest.drift['reference_cutoff'])[:10]}: "
                               f"score {manifest.drift.get('score_psi') or 0:.3f}, "
                               + (f"[yellow]> 0.2: {', '.join(drifted)}[/yellow]" if drifted else "all features ≤ 0.2"))
    elif manifest.drift and manifest.drift.get("note"):
        table.add_row("drift", str(manifest.drift["note"]))
    table.add_row("output", manifest.output)
    return table


@app.command("score")
@handle_errors
def score_command(
    task: Annotated[ScoreTarget, typer.Argument(help="A task, or all of them.")],
    as_of: AsOfOption = None,
    engine: Annotated[EngineName, typer.Option(help="local (in-process, threads) or spark.")] = EngineName.local,
    reasons: Annotated[ReasonsChoice, typer.Option(
        help="Top reasons for all rows, for the top grades only (churn high/medium, leads and "
             "customer-value tiers A/B), or none. Reasons cost ~6-10x a prediction.")] = ReasonsChoice.all,
    push: Annotated[bool, typer.Option("--push", help="Also push the scores into the Feast online store.")] = False,
    to_postgres: PostgresOption = None,
    pg_schema: SchemaOption = "crmscore",
    profile: ProfileOption = "local",
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows per chunk / part file.")] = 100_000,
    threads: Annotated[int | None, typer.Option(min=1, help="Worker threads (default: all cores).")] = None,
    drift: Annotated[bool, typer.Option(help="Drift report against the champion's holdout (MLflow).")] = True,
    spark_master: Annotated[str | None, typer.Option(help="Spark master (default: the cluster's, "
                                                          "else local[*]).")] = None,
    allow_missing: Annotated[bool, typer.Option(
        "--allow-missing", help="Score entities without features as null instead of failing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows, seconds and the output path as JSON.")] = False,
) -> None:
    """Score every active customer / open lead / customer's value with the champion into HOME/scores."""
    from pipelines.scoring.inputs import parse_as_of
    from pipelines.scoring.job import score, score_all
    from pipelines.scoring.publish import publish_all
    from pipelines.scoring.types import ScoreOptions, Skipped

    ws = workspace()
    options = ScoreOptions(engine=engine.value, reasons=reasons.value, chunk_rows=chunk_rows, threads=threads,
                           drift=drift, profile=profile, spark_master=spark_master, allow_missing=allow_missing)
    date = parse_as_of(as_of, "--as-of")
    bar = None if as_json else _RichProgress()
    if task == ScoreTarget.all:
        runs = score_all(ws, date, options, bar)
    else:
        runs = [score(ws, task.value, date, options, bar)]
    done = [r for r in runs if not isinstance(r, Skipped)]
    published = []
    if push or to_postgres:
        for r in done:
            published += publish_all(ws, [r.task], online=push, profile=profile, postgres=to_postgres,
                                     schema=pg_schema, as_of=r.as_of)
    if as_json:
        items = [{"task": r.task, "rows": r.rows, "seconds": r.seconds, "output": r.output,
                  "model_version": r.model_version, "as_of": r.as_of.isoformat(),
                  "feature_timestamps": [t.isoformat() for t in getattr(r, "feature_timestamps", [])],
                  "rows_per_second": r.rows_per_second,
                  **({"migration": r.migration} if getattr(r, "migration", None) else {})} for r in done]
        items += [{"task": r.task, "skipped": r.reason} for r in runs if isinstance(r, Skipped)]
        payload: Any = items[0] if task != ScoreTarget.all else {
            "runs": items, "rows": sum(r.rows for r in done), "seconds": round(sum(r.seconds for r in done), 3)}
        if published:
            payload["published"] = [p.model_dump(mode="json") for p in published]
        typer.echo(json.dumps(payload, indent=2))
        return
    for r in runs:
        if isinstance(r, Skipped):
            console.print(f"[yellow]{r.task}: skipped[/yellow] ({r.reason})")
        else:
            console.print(_summary_table(r))
    for p in published:
        console.print(f"{p.task}: {p.rows:,} rows → {p.target} in {p.seconds:.1f}s")


@app.command("push-scores")
@handle_errors
def push_scores_command(
    task: Annotated[ScoreTarget, typer.Argument(help="A task, or all of them.")],
    as_of: AsOfOption = None,
    online: Annotated[bool, typer.Option(help="Push into the Feast online store.")] = True,
    to_postgres: PostgresOption = None,
    pg_schema: SchemaOption = "crmscore",
    profile: ProfileOption = "local",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Publish a scoring run (default: each task's newest) to the online store and/or PostgreSQL."""
    from pipelines.scoring.inputs import parse_as_of
    from pipelines.scoring.publish import publish_all
    from pipelines.scoring.table import partitions
    from training.tasks import TASKS

    ws = workspace()
    if not online and not to_postgres:
        raise CrmscoreError("nothing to do: give --online and/or --to-postgres URL")
    tasks = [task.value]
    if task == ScoreTarget.all:
        tasks = [t for t in TASKS if partitions(ws.scores, t)]
        if not tasks:
            raise CrmscoreError("no scores to push: run `crmscore score all` first")
    published = publish_all(ws, tasks, online=online, profile=profile, postgres=to_postgres,
                            schema=pg_schema, as_of=parse_as_of(as_of, "--as-of"))
    if as_json:
        typer.echo(json.dumps([p.model_dump(mode="json") for p in published], indent=2))
        return
    for p in published:
        console.print(f"{p.task} (as of {p.as_of:%Y-%m-%d}, v{p.model_version}): {p.rows:,} rows → "
                      f"{p.target} in {p.seconds:.1f}s")
