"""Shared fixtures. Feature-store fixtures build on tests/factories.py lakes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

from crmdata.contract import TABLES
from crmdata.workspace import Workspace
from tests.factories import tiny_tables, write_lake


def contract_frame(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows as a contract-typed frame; columns a row leaves out are null."""
    schema = TABLES[table].polars_schema()
    return pl.DataFrame(
        [{c: row.get(c) for c in schema} for row in rows], schema=schema, orient="row"
    )


@dataclass(frozen=True)
class FeatureWorkspace:
    """A workspace whose tiny lake has been built, applied and materialized (local)."""

    ws: Workspace
    store: Any  # feast.FeatureStore
    as_of: list[datetime]


@pytest.fixture(scope="module")
def feature_workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureWorkspace]:
    from features.build import build_features
    from features.grid import snapshot_grid
    from features.materialize import materialize_latest
    from features.store import apply_repository, feature_store

    ws = Workspace(tmp_path_factory.mktemp("fws"))
    tables = tiny_tables()
    tables["customers"] = tables["customers"].with_columns(
        pl.Series("tier", ["gold", "silver", None]), pl.Series("credit", [1.5, None, 3.0])
    )
    tables["leads"] = tables["leads"].with_columns(pl.Series("score", [10.0, 20.0, None]))
    lake = write_lake(
        ws.lake,
        tables,
        custom_attributes={
            "customers": {"tier": "categorical", "credit": "numeric"},
            "leads": {"score": "numeric"},
        },
    )
    grid = snapshot_grid(lake) + [datetime(2023, 3, 1, tzinfo=UTC), datetime(2023, 6, 1, tzinfo=UTC)]
    build_features(lake, ws.feature_tables, grid)
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    materialize_latest(store, ws.feature_tables)
    yield FeatureWorkspace(ws=ws, store=store, as_of=sorted(grid))
