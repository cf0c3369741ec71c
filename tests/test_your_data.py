"""Issue 12, your own data: lakes without orders, brought labels, time travel."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from pipelines.train import train_task
from tests.factories import tiny_tables, write_lake
from training.tasks import get_task


def _subscriptions_only(home: Path) -> Workspace:
    ws = Workspace(home)
    tables = tiny_tables()
    write_lake(ws.lake, {k: tables[k] for k in ("customers", "subscriptions")})
    return ws


def test_models_that_need_orders_refuse_a_lake_without_them(tmp_path: Path) -> None:
    ws = _subscriptions_only(tmp_path)
    with pytest.raises(CrmscoreError, match=r"^next best products needs the orders table\(s\), which .* does not have"):
        train_task(ws, get_task("nbp"))
    with pytest.raises(CrmscoreError, match=r"^transactional churn needs the orders table.*--mode subscription"):
        train_task(ws, get_task("churn"), mode="transactional")
    assert not ws.feature_tables.exists()  # refused before building anything
