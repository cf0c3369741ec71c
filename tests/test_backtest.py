"""Issue 12, item 7: rolling-origin backtests (origins by hand; one fold on the trained tiny world)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from pipelines.backtest import fold_origins

FIRST, LAST = datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC)


def test_origins_step_back_from_the_newest_whose_window_the_data_covers() -> None:
    every = timedelta(days=30)
    newest = LAST - timedelta(days=90)  # 2024-10-02
    assert fold_origins(FIRST, LAST, 90, every, None, None) == [newest - i * every for i in range(5, -1, -1)]
    assert fold_origins(FIRST, LAST, 90, every, datetime(2024, 8, 1, tzinfo=UTC),
                        datetime(2024, 9, 30, tzinfo=UTC)) == [datetime(2024, 8, 1, tzinfo=UTC),
                                                               datetime(2024, 8, 31, tzinfo=UTC),
                                                               datetime(2024, 9, 30, tzinfo=UTC)]
    with pytest.raises(CrmscoreError, match=r"^--to 2024-12-01: its 90-day window ends after the data's last "
                                            r"event \(2024-12-31\); the newest possible origin is 2024-10-02$"):
        fold_origins(FIRST, LAST, 90, every, None, datetime(2024, 12, 1, tzinfo=UTC))
    with pytest.raises(CrmscoreError, match=r"^--from 2022-06-01 is not after the data's first event"):
        fold_origins(FIRST, LAST, 90, every, datetime(2022, 6, 1, tzinfo=UTC), None)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    from tests.test_score_world import workspace_copy

    with workspace_copy(tmp_path_factory, "backtest") as workspace:
        yield workspace


@pytest.mark.slow
def test_a_fold_trains_as_of_its_origin_registers_nothing_and_is_judged_on_the_window_after(ws: Workspace) -> None:
    from crmdata.lake import last_event
    from features.labels import churn_labels
    from pipelines.backtest import backtest
    from training.registry import configure_mlflow
    from training.tasks import get_task

    client = configure_mlflow()  # this workspace's store (an earlier test may have pointed MLflow elsewhere)
    versions = {v.version for v in client.search_model_versions("name='crm-churn'")}
    champion = client.get_model_version_by_alias("crm-churn", "champion").version
    origin = last_event(ws.lake) - timedelta(days=90)
    result = backtest(ws, get_task("churn"), start=origin, end=origin)

    assert {v.version for v in client.search_model_versions("name='crm-churn'")} == versions
    assert client.get_model_version_by_alias("crm-churn", "champion").version == champion
    [fold] = result.folds
    assert fold.origin == origin
    assert fold.rows == churn_labels(ws.lake, [origin], window_days=90, mode="subscription").height
    assert 0.6 < fold.roc_auc <= 1 and 0 < fold.positive_rate < 1
    run = client.get_run(fold.run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert run.data.tags["trained_as_of"] == f"{origin:%Y-%m-%d}"
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["backtest"] == "true" and parent.data.metrics["roc_auc"] == fold.roc_auc
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {"backtest.json", "plots"}
