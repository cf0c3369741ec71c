"""The ``crmscore`` command line: a thin Typer layer over library functions.

Every command reads its workspace from ``--home`` / ``CRMSCORE_HOME``. Errors a
user can fix print as one line and exit 1; ``--debug`` shows the traceback.

One module per command group, each with a ``typer.Typer`` called ``app`` that is
added here: a named one is a group (``crmscore features …``), an unnamed one
adds its commands at the top (``crmscore train``). ``common`` holds what they
share. Every module imports its heavy libraries inside the commands, so
``crmscore --help`` stays fast.
"""

from __future__ import annotations

from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated

import typer

from pipelines.cli import data, features, models, pipeline, report, score, serving
from pipelines.cli.common import configure_logging, console, state

app = typer.Typer(
    name="crmscore",
    help="CRM prediction service: lead scoring, churn risk and next-best-product.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# In the order of the work: data, features, models, scores, the service, all of it at once.
for group in (data, features, models, score, serving, pipeline, report):
    app.add_typer(group.app)


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
