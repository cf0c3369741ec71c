"""The ``crmscore`` command line: a thin Typer layer over library functions.

Every command reads its workspace from ``--home`` / ``CRMSCORE_HOME``. Errors a
user can fix print as one line and exit 1; ``--debug`` shows the traceback.
Heavy libraries are imported inside the commands so ``crmscore --help`` stays fast.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from enum import StrEnum
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace

log = logging.getLogger("crmscore")
# soft_wrap: long paths and messages stay on one line (greppable, copyable) instead of
# being folded at the terminal width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True)

app = typer.Typer(
    name="crmscore",
    help="CRM prediction service: lead scoring, churn risk and next-best-product.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


class _State:
    """Options of the top-level callback, shared with the commands."""

    debug: bool = False
    home: Path | None = None


state = _State()


def workspace() -> Workspace:
    return Workspace.from_env(state.home)


def handle_errors(func: F) -> F:
    """Turn an exception into one line on stderr and exit code 1 (unless --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:
            if state.debug:
                raise
            if isinstance(exc, CrmscoreError):
                err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            else:
                err_console.print(
                    f"[red]error:[/red] {exc.__class__.__name__}: {exc} "
                    "(rerun with --debug for the traceback)",
                    highlight=False,
                    soft_wrap=True,
                )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def configure_logging(debug: bool) -> None:
    """Configure logging once, for the whole process, to stderr."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=debug, rich_tracebacks=debug)],
        force=True,
    )
    if not debug:
        import warnings

        # Deprecation notices from inside dependencies (SQLAlchemy under MLflow, Feast) are
        # for their maintainers, not for someone running a command.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
    # Third-party libraries are chatty at INFO; keep their warnings only.
    for name in ("feast", "mlflow", "bentoml", "alembic", "urllib3", "numba", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"crmscore {package_version('crmscore')}")
        raise typer.Exit()


@app.callback()
def main(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="CRMSCORE_HOME",
            help="Workspace directory (lake, features, Feast, scores). Default ./data.",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Verbose logs and tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version."),
    ] = False,
) -> None:
    state.debug = debug
    state.home = home
    configure_logging(debug)


# --- data: generate, import, validate ---------------------------------------------


@app.command()
@handle_errors
def generate(
    customers: Annotated[int, typer.Option(min=10, help="Customers at the end of the history.")] = 20_000,
    leads: Annotated[int | None, typer.Option(min=0, help="Leads (default: customers / 2).")] = None,
    products: Annotated[int, typer.Option(min=5, help="Products in the catalogue.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same world.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Output lake (default: HOME/lake).")] = None,
) -> None:
    """Generate a synthetic CRM world with ground truth (under OUT/_truth)."""
    from crmdata.synth import WorldConfig, generate_world

    config = WorldConfig(
        customers=customers,
        leads=customers // 2 if leads is None else leads,
        products=products,
        seed=seed,
    )
    target = out or workspace().lake
    summary = generate_world(config, target)
    console.print(summary.render())


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


# --- train ---------------------------------------------------------------------------


class TrainTarget(StrEnum):
    churn = "churn"
    lead = "lead"
    nbp = "nbp"


@app.command()
@handle_errors
def train(
    target: Annotated[TrainTarget, typer.Argument(help="churn, lead or nbp (next-best-product).")],
    mode: Annotated[
        str, typer.Option(help="Churn only: subscription, transactional or auto (by the lake's tables).")
    ] = "auto",
    window: Annotated[int | None, typer.Option(min=1, help="Label window in days (default 90 / 60 / 30).")] = None,
    tune: Annotated[int, typer.Option(min=0, help="Optuna trials before the final fit (0: none).")] = 0,
    algorithm: Annotated[str, typer.Option(help="nbp only: als (default) or bpr.")] = "als",
    profile: Annotated[str, typer.Option(help="Feature store profile: local or redis.")] = "local",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Train a model, log it to MLflow, register it and promote it if it beats the champion."""
    ws = workspace()
    if target == TrainTarget.churn:
        from training.churn import train_churn

        if mode not in ("auto", "subscription", "transactional"):
            raise CrmscoreError(f"--mode {mode!r}: expected subscription, transactional or auto")
        kwargs = {"window_days": window} if window else {}
        result = train_churn(ws, mode=mode, tune=tune, profile=profile, **kwargs)  # type: ignore[arg-type]
    elif target == TrainTarget.lead:
        from training.lead import train_lead

        kwargs = {"window_days": window} if window else {}
        result = train_lead(ws, tune=tune, profile=profile, **kwargs)
    else:
        from training.nbp import train_nbp

        kwargs = {"window_days": window} if window else {}
        if algorithm not in ("als", "bpr"):
            raise CrmscoreError(f"--algorithm {algorithm!r}: expected als or bpr")
        result = train_nbp(ws.lake, algorithm=algorithm, **kwargs)  # type: ignore[arg-type]
    if as_json:
        from training.trainer import result_json

        typer.echo(result_json(result))
        return
    overall = result.metrics.get("overall", result.metrics)
    headline = ", ".join(f"{k}={v:.4f}" for k, v in overall.items() if k in ("roc_auc", "ece", "ndcg_at_10"))
    console.print(
        f"{result.model} version {result.version} ({result.alias}): {headline}\n"
        f"{'promoted' if result.promoted else 'not promoted'}: {result.reason}"
    )

# --- models: list and promote -------------------------------------------------------

models_app = typer.Typer(help="Registered models and their aliases.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@handle_errors
def models_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every registered version of the crmscore models, with aliases and the gate's reason."""
    import json

    from rich.table import Table

    from training.registry import configure_mlflow, list_versions

    rows = list_versions(configure_mlflow())
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(title="registered models")
    for header in ("model", "version", "aliases", "metric", "created", "gate decision"):
        table.add_column(header, overflow="fold")
    for r in rows:
        metric = f"{r.metric}={r.value:.4f}" if r.metric and r.value is not None else ""
        table.add_row(r.model, r.version, ", ".join(r.aliases), metric,
                      f"{r.created_at:%Y-%m-%d %H:%M}", r.decision or "")
    console.print(table if rows else "no registered models yet: run `crmscore train`")


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


# --- pipeline ------------------------------------------------------------------------

pipeline_app = typer.Typer(help="The end-to-end pipeline, resumable step by step.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


@pipeline_app.command("run")
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
    from rich.table import Table

    from pipelines.pipeline import Source, records_json, run_pipeline

    if sum(x is not None for x in (world, lake, mapping)) > 1:
        raise CrmscoreError("give one source: --world N, --lake DIR or --mapping FILE")
    if world is None and lake is None and mapping is None:
        lake = workspace().lake  # rerun on the workspace's own lake
    source = Source(world_customers=world, seed=seed, lake=lake, mapping=mapping)

    def progress(record: Any) -> None:
        if not as_json:
            err_console.print(f"[bold]{record.name}[/bold]: {record.status} ({record.seconds:.1f}s) {record.detail}",
                              highlight=False)

    records = run_pipeline(workspace(), source, force=force, profile=profile, on_step=progress)
    if as_json:
        typer.echo(records_json(records))
        return
    table = Table(title=f"pipeline: {source.describe()}")
    for header in ("step", "status", "seconds", "detail"):
        table.add_column(header, overflow="fold")
    for r in records:
        table.add_row(r.name, r.status, f"{r.seconds:.1f}", r.detail)
    table.add_row("total", "", f"{sum(r.seconds for r in records):.1f}", "")
    console.print(table)

# --- features: build, apply, materialize (pipelines/cli_features.py) --------------

from pipelines.cli_features import features_app  # imported here: it uses the helpers above

app.add_typer(
    features_app,
    name="features",
    help="Build point-in-time feature tables, register them with Feast, materialize.",
)

# --- serving: serve, keys (pipelines/cli_serving.py) ------------------------------

from pipelines.cli_serving import register as _register_serving

_register_serving(app)

# --- scoring: score, push-scores (pipelines/cli_score.py) --------------------------

from pipelines.cli_score import register as _register_scoring

_register_scoring(app)
