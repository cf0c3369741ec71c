"""Issue 12, your own data: lakes without orders, brought labels, time travel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from pipelines.train import train_task
from tests.conftest import contract_frame
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


def test_training_as_of_a_date_outside_the_data_is_refused(tmp_path: Path) -> None:
    ws = _subscriptions_only(tmp_path)  # events from 2023-01-05 to 2024-02-10
    with pytest.raises(CrmscoreError, match=r"^--as-of 2030-01-01 is after the data's end: the lake's last event "
                                            r"is 2024-02-10$"):
        train_task(ws, get_task("churn"), as_of=datetime(2030, 1, 1, tzinfo=UTC))
    with pytest.raises(CrmscoreError, match=r"^--as-of 2022-01-01 is before the data's start: the lake's first "
                                            r"event is 2023-01-05$"):
        train_task(ws, get_task("churn"), as_of=datetime(2022, 1, 1, tzinfo=UTC))
    assert not ws.feature_tables.exists()


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


# --- time travel: what a model trained as of T uses depends on nothing after T ----------------

_START = datetime(2023, 1, 1, tzinfo=UTC)
_HOURS = st.integers(min_value=24, max_value=700 * 24)


def _at(hours: int) -> datetime:
    return _START + timedelta(hours=hours)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[dict[str, pl.DataFrame], datetime]:
    """Random orders, subscriptions and leads of three customers, and a date T inside them."""
    tables = tiny_tables()
    ids = ["C1", "C2"]  # signed up in 2023; C3 signs up in 2024, after some T: the export lacks it
    orders = [{"order_id": f"O{i}", "customer_id": draw(st.sampled_from(ids)), "product_id": "P2",
               "ordered_at": _at(draw(_HOURS)) , "quantity": 1, "amount": 1.0} for i in range(draw(st.integers(3, 25)))]
    subs = []
    for i in range(draw(st.integers(1, 6))):
        start = draw(_HOURS)
        end = draw(st.none() | st.integers(start, 720 * 24))
        subs.append({"subscription_id": f"S{i}", "customer_id": draw(st.sampled_from(ids)), "plan": "basic",
                     "monthly_price": 9.0, "started_at": _at(start), "ended_at": None if end is None else _at(end)})
    leads = []
    for i in range(draw(st.integers(1, 6))):
        created = draw(_HOURS)
        closed = draw(st.none() | st.integers(created, 720 * 24))
        won = draw(st.booleans())
        leads.append({"lead_id": f"L{i}", "created_at": _at(created), "source": "web", "country": "US",
                      "industry": "retail", "company_size": "1-10", "job_seniority": "manager",
                      "converted_at": _at(closed) if closed is not None and won else None,
                      "lost_at": _at(closed) if closed is not None and not won else None})
    tables["orders"] = contract_frame("orders", orders)
    tables["subscriptions"] = contract_frame("subscriptions", subs)
    tables["leads"] = contract_frame("leads", leads)
    tables["lead_activities"] = contract_frame("lead_activities", [
        {"lead_id": draw(st.sampled_from([r["lead_id"] for r in leads])), "occurred_at": _at(draw(_HOURS)),
         "type": "web_visit"} for _ in range(draw(st.integers(0, 10)))])
    as_of = _at(draw(st.integers(120 * 24, 650 * 24)))
    return tables, as_of


def _known_at(tables: dict[str, pl.DataFrame], as_of: datetime) -> dict[str, pl.DataFrame]:
    """The export a CRM would have given at ``as_of``: nothing that happened at or after it."""
    def before(frame: pl.DataFrame, created: str, *later: str) -> pl.DataFrame:
        frame = frame.filter(pl.col(created) < as_of)
        return frame.with_columns(pl.when(pl.col(c) < as_of).then(pl.col(c)).alias(c) for c in later)

    out = {
        "customers": before(tables["customers"], "signup_at"),
        "products": tables["products"],
        "orders": before(tables["orders"], "ordered_at"),
        "subscriptions": before(tables["subscriptions"], "started_at", "ended_at"),
        "interactions": before(tables["interactions"], "occurred_at"),
        "leads": before(tables["leads"], "created_at", "converted_at", "lost_at"),
        "lead_activities": before(tables["lead_activities"], "occurred_at"),
    }
    known = out["customers"]["customer_id"].implode()
    for name in ("orders", "subscriptions", "interactions"):
        out[name] = out[name].filter(pl.col("customer_id").is_in(known))
    out["leads"] = out["leads"].with_columns(pl.lit(None, pl.String).alias("customer_id"))
    out["lead_activities"] = out["lead_activities"].filter(pl.col("lead_id").is_in(out["leads"]["lead_id"].implode()))
    # The export was taken at T: a marker customer who signed up just before it (in no population)
    # makes the lake's last event T, as a real export's would be.
    marker = contract_frame("customers", [{"customer_id": "C-export", "signup_at": as_of - timedelta(microseconds=1),
                                           "country": "US", "segment": "smb", "industry": "x",
                                           "acquisition_channel": "x"}])
    out["customers"] = pl.concat([out["customers"], marker])
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(history=_histories())
def test_a_model_trained_as_of_t_uses_no_event_after_t(tmp_path_factory: pytest.TempPathFactory,
                                                        history: tuple[dict[str, pl.DataFrame], datetime]) -> None:
    from crmdata.lake import last_event
    from features.build import build_features
    from features.catalog import table_file
    from features.labels import churn_labels, lead_conversion_labels
    from training.frames import choose_cutoffs

    tables, as_of = history
    root = tmp_path_factory.mktemp("asof")
    full = write_lake(root / "full", tables)
    past = write_lake(root / "past", _known_at(tables, as_of))
    assume(as_of <= last_event(full))  # training as of a date after the data's end is refused
    window = 30
    cutoffs = choose_cutoffs(full, window, None, as_of)
    assert cutoffs == choose_cutoffs(past, window, None, as_of)
    assert all(c + timedelta(days=window) <= as_of for c in cutoffs)
    assume(cutoffs)
    for mode in ("subscription", "transactional"):
        assert_frame_equal(churn_labels(full, cutoffs, window_days=window, mode=mode),  # type: ignore[arg-type]
                           churn_labels(past, cutoffs, window_days=window, mode=mode))  # type: ignore[arg-type]
    assert_frame_equal(lead_conversion_labels(full, cutoffs, window_days=window),
                       lead_conversion_labels(past, cutoffs, window_days=window))
    build_features(full, root / "f_full", cutoffs)
    build_features(past, root / "f_past", cutoffs)
    for entity, key in (("customer", "customer_id"), ("lead", "lead_id")):
        seen = pl.read_parquet(root / "f_full" / table_file(entity))
        known = pl.read_parquet(root / "f_past" / table_file(entity)).filter(pl.col(key) != "C-export")
        assert_frame_equal(seen, known)


# --- labels you bring -------------------------------------------------------------------------


def _with_churn_labels(root: Path, rows: list[dict]) -> Path:
    tables = tiny_tables()
    tables["churn_labels"] = contract_frame("churn_labels", rows)
    return write_lake(root, tables)


def test_brought_labels_are_a_labels_frame_and_respect_as_of(tmp_path: Path) -> None:
    from features.labels import brought_labels

    lake = _with_churn_labels(tmp_path / "lake", [
        {"customer_id": "C1", "as_of": datetime(2023, 6, 1, tzinfo=UTC), "churned": True},
        {"customer_id": "C2", "as_of": datetime(2023, 6, 1, tzinfo=UTC), "churned": False},
        {"customer_id": "C1", "as_of": datetime(2023, 9, 1, tzinfo=UTC), "churned": False},
    ])
    got = brought_labels(lake, "churn_labels", window_days=90)
    assert got is not None
    assert got.to_dicts() == [
        {"customer_id": "C1", "event_timestamp": datetime(2023, 6, 1, tzinfo=UTC), "label": 1},
        {"customer_id": "C2", "event_timestamp": datetime(2023, 6, 1, tzinfo=UTC), "label": 0},
        {"customer_id": "C1", "event_timestamp": datetime(2023, 9, 1, tzinfo=UTC), "label": 0},
    ]
    # As of 2023-10-01, only the June labels' 90-day windows have ended (June 1 + 90 d = Aug 30).
    early = brought_labels(lake, "churn_labels", window_days=90, as_of=datetime(2023, 10, 1, tzinfo=UTC))
    assert early is not None and early["event_timestamp"].unique().to_list() == [datetime(2023, 6, 1, tzinfo=UTC)]
    assert brought_labels(lake, "lead_labels", window_days=60) is None
    # A label's date is when an outcome was judged, not an event: the lake's span is unchanged.
    from crmdata.lake import event_span
    assert event_span(lake) == event_span(write_lake(tmp_path / "plain"))


def test_brought_labels_are_validated_like_every_table(tmp_path: Path) -> None:
    from crmdata.importer import import_lake

    (tmp_path / "customers.csv").write_text("id,signup\nC1,2023-01-05\nC2,2023-02-01\n")
    (tmp_path / "subs.csv").write_text("id,customer,start\nS1,C1,2023-01-05\nS2,C2,2023-02-01\n")
    mapping = tmp_path / "mapping.yaml"

    def run(labels: str) -> str:
        (tmp_path / "labels.csv").write_text(labels)
        mapping.write_text(
            "tables:\n"
            "  customers: {path: customers.csv, columns: {customer_id: id, signup_at: signup},\n"
            "              constants: {country: US, segment: smb, industry: x, acquisition_channel: web}}\n"
            "  subscriptions: {path: subs.csv, columns: {subscription_id: id, customer_id: customer,\n"
            "                  started_at: start}, constants: {plan: basic, monthly_price: 9.0, ended_at: null}}\n"
            "  churn_labels: {path: labels.csv, columns: {customer_id: customer, as_of: date,\n"
            "                 churned: churned}}\n")
        with pytest.raises(CrmscoreError) as info:
            import_lake(mapping, tmp_path / "lake")
        assert not (tmp_path / "lake").exists()
        return str(info.value)

    assert run("customer,date,churned\nC1,2023-06-01,yes\nC9,2023-06-01,no\nC8,2023-06-01,no\n") == (
        "imported data breaks the contract (1 problem(s), nothing written): "
        "churn_labels.customer_id: 2 rows reference unknown customers")
    assert run("customer,date,churned\nC1,2023-06-01,yes\nC2,2099-06-01,no\n").startswith(
        "imported data breaks the contract (1 problem(s), nothing written): "
        "churn_labels.as_of: 1 rows are in the future")
    assert run("customer,date,churned\nC1,2023-06-01,yes\nC1,2023-06-01,no\n") == (
        "imported data breaks the contract (1 problem(s), nothing written): "
        "churn_labels.customer_id,as_of: 2 rows share a duplicate (customer_id, as_of)")
    assert run("customer,date,churned\nC1,2023-06-01,yes\nC2,2023-06-01,maybe\n") == (
        "churn_labels.churned: source column 'churned': 1 value(s) are not booleans "
        "(true/t/yes/y/1 or false/f/no/n/0) (e.g. 'maybe')")


def test_labels_at_fewer_than_three_dates_are_split_by_entity_and_stratified(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import pandas as pd

    from training.frames import brought_split
    from training.trainer import split_by_entity

    # 100 customers at two dates; 20 churned at some date. Every row of a customer in one fold.
    ids = [f"C{i:03d}" for i in range(100)]
    frame = pd.DataFrame({"customer_id": ids * 2,
                          "event_timestamp": pd.to_datetime(["2024-01-01"] * 100 + ["2024-04-01"] * 100, utc=True),
                          "label": [int(i < 10) for i in range(100)] + [int(10 <= i < 20) for i in range(100)]})
    train, valid, holdout = split_by_entity(frame, "customer_id")
    folds = [set(f["customer_id"]) for f in (train, valid, holdout)]
    assert [len(f) for f in folds] == [60, 20, 20]
    assert not (folds[0] & folds[1]) and not (folds[0] & folds[2]) and not (folds[1] & folds[2])
    churners = {f"C{i:03d}" for i in range(20)}
    assert [len(f & churners) for f in folds] == [12, 4, 4]
    assert len(train) + len(valid) + len(holdout) == 200

    labels = pl.from_pandas(frame)
    with caplog.at_level(logging.INFO, logger="training.frames"):
        assert brought_split("churn_labels", labels) == "entity"
    assert "This is a cross-sectional model, not a forecast" in caplog.text
    third = labels.head(3).with_columns(pl.lit(datetime(2024, 7, 1, tzinfo=UTC)).cast(labels["event_timestamp"].dtype)
                                        .alias("event_timestamp"))
    assert brought_split("churn_labels", pl.concat([labels, third])) == "time"
    with pytest.raises(CrmscoreError, match=r"^churn_labels: no labels whose window is observed"):
        brought_split("churn_labels", labels.clear())
