"""Metrics, calibration and grading against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.calibration import Calibrator, Grading, score_1_99
from training.metrics import (
    binary_metrics,
    evaluate,
    expected_calibration_error,
    flatten,
    top_fraction,
)
from training.tasks import CHURN, LEAD

Y = [1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
P = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]


def test_binary_metrics_by_hand() -> None:
    m = binary_metrics(Y, P)
    # 3 positives × 7 negatives = 21 pairs; correctly ordered: 7 + 6 + 4.
    assert m["roc_auc"] == pytest.approx(17 / 21)
    # precision at each positive: 1/1, 2/3, 3/6.
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    assert m["brier"] == pytest.approx(1.8525 / 10)
    expected_ll = -sum(math.log(p if y else 1 - p) for y, p in zip(Y, P, strict=True)) / 10
    assert m["log_loss"] == pytest.approx(expected_ll)
    # one row per bin: mean |y - p|.
    assert m["ece"] == pytest.approx(3.55 / 10)
    # top 10% = 1 row (a positive); top 20% = 2 rows (one positive). Base rate 0.3.
    assert m["lift_top10"] == pytest.approx(1 / 0.3)
    assert m["capture_top10"] == pytest.approx(1 / 3)
    assert m["lift_top20"] == pytest.approx(0.5 / 0.3)
    assert m["capture_top20"] == pytest.approx(1 / 3)
    assert m["positive_rate"] == pytest.approx(0.3)


def test_perfect_and_inverted_rankings() -> None:
    y = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert binary_metrics(y, np.linspace(1, 0, 10))["roc_auc"] == 1.0
    assert binary_metrics(y, np.linspace(0, 1, 10))["roc_auc"] == 0.0
    lift, capture = top_fraction(y, np.linspace(1, 0, 10), 0.2)
    assert (lift, capture) == (pytest.approx(5.0), 1.0)


def test_top_fraction_ties_break_by_row_order() -> None:
    lift, capture = top_fraction([0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5], 0.5)
    assert capture == 0.5  # rows 0 and 1: one of the two positives
    assert lift == pytest.approx(1.0)


def test_ece_is_zero_when_rates_match_scores() -> None:
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75]
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_evaluate_breaks_down_by_segment_and_skips_tiny_ones() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=400)
    y = (rng.uniform(size=400) < p).astype(int)
    seg = np.array(["smb"] * 200 + ["enterprise"] * 190 + ["tiny"] * 10)
    result = evaluate(y, p, seg)
    assert set(result["by_segment"]) == {"smb", "enterprise"}
    assert result["by_segment"]["smb"] == binary_metrics(y[:200], p[:200])
    flat = flatten(result)
    assert flat["roc_auc"] == result["overall"]["roc_auc"]
    assert flat["segment.smb.roc_auc"] == result["by_segment"]["smb"]["roc_auc"]


def test_calibration_improves_ece_on_a_skewed_fixture() -> None:
    rng = np.random.default_rng(7)
    true_p = rng.beta(1, 8, size=40_000)  # rare positives, like churn
    y = (rng.uniform(size=true_p.size) < true_p).astype(int)
    raw = np.sqrt(true_p)  # a model that ranks well but overstates every risk
    fit, test = slice(0, 20_000), slice(20_000, None)
    before = expected_calibration_error(y[test], raw[test])
    for method in ("isotonic", "platt"):
        cal = Calibrator.fit(raw[fit], y[fit], method=method)
        after = expected_calibration_error(y[test], cal.apply(raw[test]))
        assert after < before / 5, (method, before, after)
        # Serialised and restored as JSON, it maps identically.
        again = Calibrator.model_validate_json(cal.model_dump_json())
        np.testing.assert_array_equal(again.apply(raw[test]), cal.apply(raw[test]))


def test_grading_follows_validation_quantiles() -> None:
    p = np.arange(100) / 100
    grading = Grading.fit(p, *LEAD.grades)
    grades = grading.assign(p)
    counts = {g: int((grades == g).sum()) for g in "ABCD"}
    assert counts == {"A": 10, "B": 20, "C": 30, "D": 40}
    assert grades[-1] == "A" and grades[0] == "D"
    bands = Grading.fit(p, *CHURN.grades).assign([0.0, 0.75, 0.95])
    assert bands.tolist() == ["low", "medium", "high"]


def test_score_1_99() -> None:
    assert score_1_99([0.0, 0.004, 0.3, 0.994, 1.0]).tolist() == [1, 1, 30, 99, 99]
