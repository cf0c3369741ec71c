"""One workspace for every command.

Every path a command reads or writes is derived here from one home directory
(``--home`` / ``CRMSCORE_HOME``, default ``./data``), so commands never guess at
each other's layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "CRMSCORE_HOME"
DEFAULT_HOME = Path("data")
MLFLOW_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_MLFLOW_URI = "sqlite:///mlflow/mlflow.db"


@dataclass(frozen=True)
class Workspace:
    """The directory layout under one home directory."""

    home: Path

    @classmethod
    def from_env(cls, home: Path | str | None = None) -> Workspace:
        """Resolve the home from an explicit value, then the environment, then the default."""
        chosen = home if home is not None else os.environ.get(HOME_ENV) or DEFAULT_HOME
        return cls(Path(chosen).expanduser().absolute())

    @property
    def lake(self) -> Path:
        """Validated raw tables (parquet), one file per contract table."""
        return self.home / "lake"

    @property
    def feature_tables(self) -> Path:
        """Feature tables keyed by entity + event_timestamp (the Feast offline data)."""
        return self.home / "features"

    @property
    def feast(self) -> Path:
        """Feast registry and embedded online store."""
        return self.home / "feast"

    @property
    def scores(self) -> Path:
        """Batch score tables and their run manifests."""
        return self.home / "scores"

    @property
    def keys(self) -> Path:
        """Hashes of the serving API keys (never the keys themselves)."""
        return self.home / "keys"


def mlflow_tracking_uri() -> str:
    """The MLflow tracking URI: the environment's, else the local SQLite store."""
    return os.environ.get(MLFLOW_ENV) or DEFAULT_MLFLOW_URI
