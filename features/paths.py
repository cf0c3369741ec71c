"""Where the default workspace's feature tables are, for Feast's CLI.

Kept apart from ``crmdata.workspace`` only to anchor the *default* home at the
project root rather than the current directory: Feast's CLI changes into
``features/`` before it imports the definitions, and ``./data`` from there would
be the wrong place.
"""

from __future__ import annotations

import os
from pathlib import Path

from crmdata.workspace import DEFAULT_HOME, HOME_ENV, Workspace

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_workspace() -> Workspace:
    """``$CRMSCORE_HOME`` if set, else ``<project root>/data``."""
    if os.environ.get(HOME_ENV):
        return Workspace.from_env()
    return Workspace((PROJECT_ROOT / DEFAULT_HOME).absolute())


def default_feature_tables() -> Path:
    return default_workspace().feature_tables
