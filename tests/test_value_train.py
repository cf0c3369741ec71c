"""The customer-value label and the trainer's bad-input refusals, on hand-built lakes (no features)."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pytest

from crmdata.errors import CrmscoreError
from features.labels import value_labels
from tests.factories import tiny_tables, ts, write_lake
from training.value.train import check_history, training_window, value_cutoffs


def lake_with_amounts(tmp_path: Path, amounts: list[float]) -> Path:
    tables = tiny_tables()
    tables["orders"] = tables["orders"].with_columns(pl.Series("amount", amounts, dtype=pl.Float64))
    return write_lake(tmp_path / "lake", tables)


def test_value_labels_by_hand(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    labels = value_labels(lake, [ts(2023, 1, 6), ts(2023, 3, 1, 12)], window_days=30)
    rows = {(r["customer_id"], r["event_timestamp"]): r["label"] for r in labels.iter_rows(named=True)}
    assert rows == {
        # Signed up before 2023-01-06: C1 only; its orders of Jan 6 (at the cutoff) and Feb 1.
        ("C1", ts(2023, 1, 6)): 120.0 + 46.5,
        # C2 signed up at 00:00 on Mar 1 and ordered on Mar 2; C1 ordered nothing in the window.
        ("C1", ts(2023, 3, 1, 12)): 0.0,
        ("C2", ts(2023, 3, 1, 12)): 31.0,
    }
    assert labels["label"].dtype == pl.Float64


def test_negative_amounts_are_refused_in_one_line(tmp_path: Path) -> None:
    lake = lake_with_amounts(tmp_path, [120.0, -46.5, 31.0, 9.99])
    with pytest.raises(CrmscoreError, match=r"orders.amount: 1 orders below 0 \(rule: amount ≥ 0") as err:
        check_history(lake, 30, None)
    assert "\n" not in str(err.value)


def test_a_horizon_longer_than_the_history_is_refused(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    with pytest.raises(CrmscoreError, match=r"--horizon 500 days is longer than the order history: 401 days "
                                            r"\(2023-01-06 … 2024-02-11\)"):
        check_history(lake, 500, None)


def test_too_few_repeat_buyers_are_refused(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    with pytest.raises(CrmscoreError, match=r"need ≥ 100 customers with a repeat purchase \(2\+ orders\) by "
                                            r"2024-02-11, found 1"):
        check_history(lake, 30, None)


def test_zero_amounts_count_as_orders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lake = lake_with_amounts(tmp_path, [120.0, 0.0, 31.0, 9.99])
    with caplog.at_level(logging.INFO, logger="training.value.train"):
        history = check_history(lake, 30, None, min_repeat=1)
    assert (history.orders, history.zero_amounts, history.repeat_customers) == (4, 1, 1)
    assert "1 orders of amount 0 count as orders" in caplog.text
    # And the label adds nothing for them: C1's window holds 120 + 0.
    labels = value_labels(lake, [ts(2023, 1, 6)], window_days=30)
    assert labels["label"].to_list() == [120.0]


def test_too_short_a_history_for_the_horizon_says_what_is_missing(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    history = check_history(lake, 365, None, min_repeat=1)
    with pytest.raises(CrmscoreError, match=r"need ≥ 3 cutoffs whose 365-day window ends by 2024-02-11 "
                                            r"\(train, validation, holdout\), found 1: the orders span 401 days"):
        value_cutoffs(lake, 365, history, None, None)


def test_too_little_history_for_h_trains_the_longest_window_with_five_cutoffs(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    history = check_history(lake, 365, None, min_repeat=1)
    window, cutoffs = training_window(lake, 365, history, None, None)
    # The grid's newest snapshot is Monday 2024-02-12: 37 weeks before it, 2023-05-29, is the newest cutoff
    # of a 253-day window, and four more every 28 days reach 2023-02-06, after the first order + 28 days.
    # A 260-day window starts a week earlier and its fifth cutoff (2023-01-30) would have no history.
    assert window == 253
    assert cutoffs == [ts(2023, 2, 6), ts(2023, 3, 6), ts(2023, 4, 3), ts(2023, 5, 1), ts(2023, 5, 29)]


def test_no_window_fits_says_so(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    as_of = ts(2023, 5, 1)
    history = check_history(lake, 60, as_of, min_repeat=1)
    with pytest.raises(CrmscoreError, match=r"found 1: .*; nor does a window of 28\+ days give 5 cutoffs"):
        training_window(lake, 60, history, as_of, None)
