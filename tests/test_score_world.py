"""The trained tiny world the scoring tests share (no tests of its own).

Training three models is the expensive part (minutes on a loaded 2-core box), so
it happens once per test session: the first xdist worker to get here builds it
under a file lock in the session's shared temp directory, the others wait and
reuse it. Each test module then works on its own copy (``scoring_workspace``),
so runs that write scores, MLflow runs or online rows never see each other.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from crmdata.workspace import Workspace

READY = ".ready"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _env(home: Path) -> dict[str, str]:
    return {"CRMSCORE_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db"}


def trained_world(factory: pytest.TempPathFactory) -> Path:
    """A workspace with a 3000-customer world and trained churn, lead and nbp champions."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by this session's workers, not by other sessions
    target = root / "score-world"
    with _locked(root / "score-world.lock"):
        if not (target / READY).exists():
            shutil.rmtree(target, ignore_errors=True)
            with pytest.MonkeyPatch.context() as mp:
                for k, v in _env(target).items():
                    mp.setenv(k, v)
                _build(Workspace(target))
            (target / READY).touch()
    return target


def _build(ws: Workspace) -> None:
    from crmdata.synth import WorldConfig, generate_world
    from training.churn import train_churn
    from training.lead import train_lead
    from training.nbp import train_nbp

    generate_world(WorldConfig(customers=3000, leads=2000, products=60, seed=3), ws.lake)
    train_churn(ws)
    train_lead(ws)
    train_nbp(ws.lake)


@contextmanager
def workspace_copy(factory: pytest.TempPathFactory, name: str) -> Iterator[Workspace]:
    """A private copy of the trained world, with the environment pointing at it.

    The copy's MLflow store still finds the models' artifacts in the shared world
    (absolute URIs, read only); the Feast repository is re-applied so its sources
    read the copy's feature tables and score tables.
    """
    from features.store import apply_repository, feature_store

    shared = trained_world(factory)
    home = factory.mktemp(name)
    shutil.copytree(shared, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns(READY))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(home).items():
            mp.setenv(k, v)
        ws = Workspace(home)
        apply_repository(feature_store(ws), ws.feature_tables)
        yield ws
