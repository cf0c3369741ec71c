"""What every command module of the CLI shares: consoles, the top-level options,
error handling, logging, and the task choices of ``train``, ``score`` and ``push-scores``.

This module is imported on every ``crmscore`` call, ``--help`` included, so it
imports nothing heavy: see ``TaskKey`` for how the task registry is read late.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from enum import EnumType, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace

if TYPE_CHECKING:
    from features.store import Profile

# soft_wrap: long paths and messages stay on one line (greppable, copyable) instead of
# being folded at the terminal width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

#: What libraries say about their own future (an API going away, a default changing):
#: for their maintainers, not for someone running a command. ``--debug`` shows them.
LIBRARY_NOTICES: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
#: Libraries that log at INFO what a person running a command need not read. (MLflow
#: sets its own loggers' level when it is imported: see ``configure_logging``.)
CHATTY_LOGGERS = ("feast", "bentoml", "urllib3", "numba", "matplotlib")


class _State:
    """Options of the top-level callback, shared with the commands."""

    debug: bool = False
    home: Path | None = None


state = _State()


def workspace() -> Workspace:
    return Workspace.from_env(state.home)


def store_profile(value: str) -> Profile:
    """The ``--profile`` option as a feature store profile, or a one-line error."""
    from features.store import Profile  # polars, through features.build: not on --help

    try:
        return Profile(value)
    except ValueError:
        raise CrmscoreError(f"--profile {value!r}: expected local or redis") from None


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
    """Configure logging and warnings once, for the whole process, to stderr.

    crmscore's own loggers (``log.warning`` included) always show. Library notices
    (``LIBRARY_NOTICES``) are dropped where a warning is shown rather than by a
    warnings filter: Feast's modules run ``warnings.simplefilter("once",
    DeprecationWarning)`` when they are imported, in the middle of a command, and
    that puts their filter in front of any installed here. With ``--debug`` every
    warning shows, once per place it comes from.
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=debug, rich_tracebacks=debug)],
        force=True,
    )
    shown = warnings.showwarning
    show_all = shown.show if isinstance(shown, _WithoutLibraryNotices) else shown
    warnings.showwarning = show_all if debug else _WithoutLibraryNotices(show_all)
    if debug:
        warnings.simplefilter("default")
    else:
        # MLflow gives its loggers a handler and MLFLOW_LOGGING_LEVEL (default INFO)
        # when it is imported, inside a command, replacing any level set here.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)


class _WithoutLibraryNotices:
    """A ``warnings.showwarning`` that shows what ``show`` would, minus library notices."""

    def __init__(self, show: Callable[..., None]) -> None:
        self.show = show

    def __call__(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
        if not _is_library_notice(category):
            self.show(message, category, filename, lineno, file, line)


def _is_library_notice(category: type[Warning]) -> bool:
    # Some libraries give deprecations a class of their own outside DeprecationWarning so
    # that Python's default filters show them (FastAPI's FastAPIDeprecationWarning is a
    # UserWarning, raised when `crmscore features ui` builds Feast's UI app): by name.
    return issubclass(category, LIBRARY_NOTICES) or category.__name__.endswith("DeprecationWarning")


# --- task choices -------------------------------------------------------------------------


class _TaskChoices(EnumType):
    """Metaclass of an Enum whose members are the task registry's keys, read when typer
    first lists or checks them (a command's ``--help``, or parsing its argument).

    ``training.tasks`` imports polars (through ``features.catalog``): reading it when
    the commands are declared would cost every ``crmscore --help`` about 0.4 s.
    Members the class declares itself (``all``) come after the tasks.
    """

    def __iter__(cls) -> Iterator[Any]:
        return iter(_task_choices(cls))

    def __len__(cls) -> int:
        return len(_task_choices(cls))


@functools.cache
def _task_choices(shell: EnumType) -> type[StrEnum]:
    from training.tasks import TASKS

    own = {member.name: member.value for member in EnumType.__iter__(shell)}
    return StrEnum(shell.__name__, {**{key: key for key in TASKS}, **own})  # type: ignore[return-value]


class TaskKey(StrEnum, metaclass=_TaskChoices):
    """A task of the registry (``training.tasks.TASKS``): what ``train`` trains."""


class ScoreTarget(StrEnum, metaclass=_TaskChoices):
    """A task of the registry, or all of them: what ``score`` and ``push-scores`` take."""

    all = "all"
