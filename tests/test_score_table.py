"""Score-table mechanics without a model: atomic partition swaps, reconciliation
messages, JSON literals of reason values, and the pipeline's new steps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.scoring.table import (
    ReconciliationError,
    latest_partition,
    partition_dir,
    partitions,
    reconcile,
    staged_partition,
)

AS_OF = datetime(2025, 12, 29, tzinfo=UTC)


def test_a_staged_partition_replaces_the_old_one_whole(tmp_path: Path) -> None:
    for content in ("first", "second"):
        with staged_partition(tmp_path, "churn", AS_OF) as staging:
            (staging / f"{content}.parquet").write_text(content)
    target = partition_dir(tmp_path, "churn", AS_OF)
    assert target.name == "as_of_date=2025-12-29"
    assert [p.name for p in target.iterdir()] == ["second.parquet"]
    assert not list((tmp_path / ".staging").iterdir())
    assert latest_partition(tmp_path, "churn") == target


def test_a_failed_block_keeps_the_old_partition(tmp_path: Path) -> None:
    with staged_partition(tmp_path, "lead", AS_OF) as staging:
        (staging / "good.parquet").write_text("good")
    with pytest.raises(RuntimeError), staged_partition(tmp_path, "lead", AS_OF) as staging:
        (staging / "half.parquet").write_text("half")
        raise RuntimeError("crash")
    target = partition_dir(tmp_path, "lead", AS_OF)
    assert [p.name for p in target.iterdir()] == ["good.parquet"]
    # Staging lives outside the table directory: readers of the table never see it.
    assert partitions(tmp_path, "lead") == [target]
    assert not list((tmp_path / ".staging").iterdir())


def test_reconciliation_names_missing_extra_and_duplicate_rows() -> None:
    reconcile(["a", "b"], ["b", "a"], "ok")
    with pytest.raises(ReconciliationError, match=r"3 entities in, 3 rows out: 1 entities have no score "
                                                  r"\(e\.g\. c\); 1 scored rows are not in the population "
                                                  r"\(e\.g\. x\)"):
        reconcile(["a", "b", "c"], ["a", "b", "x"], "churn as of 2025-12-29")
    with pytest.raises(ReconciliationError, match="1 duplicate rows"):
        reconcile(["a", "b"], ["a", "b", "b"], "lead")


def test_reason_values_are_json_literals() -> None:
    from pipelines.scoring.predict import _json_literals

    cases = [
        (pa.array(['say "hi"', None, "é\\n"]), ['say "hi"', None, "é\\n"]),
        (pa.array([1, None, -3], pa.int64()), [1, None, -3]),
        (pa.array([0.1, None, float("nan"), float("inf"), 1e-7, 12.0]), [0.1, None, None, None, 1e-7, 12.0]),
        (pa.array([True, None, False]), [True, None, False]),
    ]
    for values, expected in cases:
        assert [json.loads(v) for v in _json_literals(values).to_pylist()] == expected


def test_the_pipeline_scores_and_pushes_after_training() -> None:
    from pipelines.pipeline import STEPS

    names = [name for name, _ in STEPS]
    # Every model is trained (in the task registry's order) before anything is scored or pushed.
    assert names[-2:] == ["score all", "push scores"]
    assert all(n.startswith("train ") for n in names[names.index("train churn"):-2])


def test_the_score_views_are_registered_with_the_repository(tmp_path: Path) -> None:
    from feast import FeatureView, PushSource

    from features.catalog import SCORE_FIELDS, SCORE_VIEW_NAMES
    from features.store import repository_objects

    objects = {o.name: o for o in repository_objects(tmp_path / "features")}
    for task, view_name in SCORE_VIEW_NAMES.items():
        view = objects[view_name]
        assert isinstance(view, FeatureView) and isinstance(view.stream_source, PushSource)
        assert [f.name for f in view.features] == [f.name for f in SCORE_FIELDS[task]]
        # The batch source reads this workspace's score table, the same object as registered.
        assert view.batch_source.path == str(tmp_path / "scores" / task)
        assert view.batch_source is objects[f"{view_name}_source"]
    # The feature services are untouched: no score view in any of them.
    services = [o for o in objects.values() if type(o).__name__ == "FeatureService"]
    assert all(p.name not in SCORE_VIEW_NAMES.values() for s in services for p in s.feature_view_projections)


def test_the_point_in_time_read_by_hand(tmp_path: Path) -> None:
    """Feast's rule per entity: the newest row with as_of - ttl <= t <= as_of, else nulls;
    rows come back in population order."""
    from datetime import timedelta

    import polars as pl

    from pipelines.scoring.inputs import ServiceRead, ViewRead, read_features_as_of

    day = timedelta(days=1)
    rows = [  # (entity, days before as_of, value, plan)
        ("A", 14, 1.0, "x"), ("A", 7, 2.0, "y"), ("A", 0, 3.0, "z"), ("A", -7, 4.0, "future"),
        ("B", 20, 10.0, "old"), ("B", 7, 11.0, "b"),
        ("C", 20, 20.0, "too old"),
        ("D", 14, 30.0, "edge"),
    ]
    table = pl.DataFrame({
        "customer_id": [r[0] for r in rows],
        "event_timestamp": [AS_OF - r[1] * day for r in rows],
        "value": [r[2] for r in rows],
        "plan": [r[3] for r in rows],
    }).sort("event_timestamp", "customer_id")
    table.write_parquet(tmp_path / "customer.parquet")
    other = pl.DataFrame({"customer_id": ["A", "B"], "event_timestamp": [AS_OF - 3 * day, AS_OF - 9 * day],
                          "logins": [5, 6]})
    other.write_parquet(tmp_path / "logins.parquet")

    def view(name: str, features: tuple[str, ...]) -> ViewRead:
        return ViewRead(view=name, path=str(tmp_path / f"{name}.parquet"), key="customer_id",
                        timestamp_field="event_timestamp", ttl=timedelta(days=14), features=features)

    population = pl.DataFrame({"customer_id": ["E", "C", "A", "D", "B"]})
    one = ServiceRead(service="s", key="customer_id", views=(view("customer", ("value", "plan")),))
    got = read_features_as_of(one, population, AS_OF)
    assert got["customer_id"].to_list() == ["E", "C", "A", "D", "B"]
    assert got["value"].to_list() == [None, None, 3.0, 30.0, 11.0]
    assert got["plan"].to_list() == [None, None, "z", "edge", "b"]
    assert got["feature_timestamp"].to_list() == [None, None, AS_OF, AS_OF - 14 * day, AS_OF - 7 * day]

    # Two views: the row's freshness is its oldest view row, null when any view has none.
    two = ServiceRead(service="s", key="customer_id",
                      views=(view("customer", ("value",)), view("logins", ("logins",))))
    got = read_features_as_of(two, population, AS_OF)
    assert got.columns == ["customer_id", "feature_timestamp", "value", "logins"]
    assert got["logins"].to_list() == [None, None, 5, None, 6]
    assert got["feature_timestamp"].to_list() == [None, None, AS_OF - 3 * day, None, AS_OF - 9 * day]
