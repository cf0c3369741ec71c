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


def test_a_minimum_data_error_says_what_was_counted_where_and_what_to_do() -> None:
    import pandas as pd

    from training.churn import CHURN_LABEL_SOURCE
    from training.model import ModelSpec
    from training.tasks import CHURN
    from training.trainer import BinaryTask, check_minimum_data

    spec = ModelSpec(task=CHURN.key, model_name=CHURN.model_name, feature_service=CHURN.feature_service,
                     entity_key="customer_id", features=["x"], label_window_days=90, mode="subscription")
    task = BinaryTask(spec=spec, segment_column="segment", grading=CHURN.grades or ([], []), baseline_name="rule",
                      positive_noun="churned customers", negative_noun="retained customers",
                      label_source=CHURN_LABEL_SOURCE["subscription"],
                      advice="bring labels in a churn_labels table (docs/your-data.md)")
    cutoffs = pd.to_datetime(["2023-05-29", "2023-10-02", "2024-04-01", "2024-05-06", "2024-06-03"], utc=True)
    frame = pd.DataFrame({"event_timestamp": cutoffs.repeat(300), "label": 0})
    with pytest.raises(CrmscoreError) as info:
        check_minimum_data(frame, task)
    assert str(info.value) == (
        "need ≥ 200 churned customers in the training cutoffs, found 0: churn labels come from subscription "
        "end dates, and none fall inside the 90-day windows after the cutoffs 2023-05-29 … 2024-04-01; "
        "bring labels in a churn_labels table (docs/your-data.md)"
    )
