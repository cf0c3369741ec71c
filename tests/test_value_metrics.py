"""Exact values of the customer-value metrics and of the A–D tier rule on hand-built inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.value.metrics import (
    coverage,
    decile_mape,
    decile_table,
    evaluate_value,
    normalized_gini,
    spearman,
    top_capture,
    total_error,
)
from training.value.spec import ValueSettings, cost_to_serve, expected_margin
from training.value.tiers import NO_A, assign_tiers, fit_thresholds


def test_normalized_gini_by_hand() -> None:
    # Ordered by prediction the actual values read 3, 1, 2, 0: cumulative sums 3, 4, 6, 6 of 6,
    # Gini = 19/24 − 5/8 = 1/6; in their own order 3, 2, 1, 0: 20/24 − 5/8 = 5/24. 1/6 ÷ 5/24 = 0.8.
    assert normalized_gini([0, 1, 2, 3], [0.1, 0.4, 0.3, 0.9]) == pytest.approx(0.8)
    assert normalized_gini([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)
    assert normalized_gini([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(-1.0)


def test_normalized_gini_averages_ties() -> None:
    # Two tie groups: {0, 2} (mean 1) ranked above {1, 3} (mean 2): 1, 1, 2, 2 →
    # cumulative 1, 2, 4, 6 → 13/24 − 5/8 = −1/12; ÷ 5/24 = −0.4, however the ties are broken.
    assert normalized_gini([0, 2, 1, 3], [1, 1, 0, 0]) == pytest.approx(-0.4)
    assert normalized_gini([2, 0, 3, 1], [1, 1, 0, 0]) == pytest.approx(-0.4)
    # One prediction for everyone is no better than random: 0.
    assert normalized_gini([1, 2, 3], [5, 5, 5]) == pytest.approx(0.0)


def test_decile_mape_by_hand() -> None:
    # Two groups by prediction: {0, 1} predicted 1 on average, actual 2 → |1 − 2| / 2 = 0.5;
    # {3, 2} predicted 5, actual 5 → 0. Mean 0.25.
    actual, predicted = np.array([1, 3, 4, 6.0]), np.array([1, 1, 6, 4.0])
    assert decile_mape(actual, predicted, groups=2) == pytest.approx(0.25)
    table = decile_table(actual, predicted, groups=2)
    assert table["predicted"].tolist() == [1.0, 5.0]
    assert table["actual"].tolist() == [2.0, 5.0]
    # Ten groups of two; every prediction 10% high → every group 10% off.
    actual = np.arange(1, 21, dtype=float)
    assert decile_mape(actual, 1.1 * actual) == pytest.approx(0.1)
    # A group with no actual spend is left out rather than divided by.
    assert decile_mape(np.array([0, 0, 4, 6.0]), np.array([1, 1, 6, 4.0]), groups=2) == pytest.approx(0.0)


def test_total_capture_coverage_spearman_by_hand() -> None:
    actual, predicted = np.array([1, 3, 4, 6.0]), np.array([1, 1, 6, 4.0])
    assert total_error(actual, predicted) == pytest.approx(12 / 14 - 1)
    # Top half by prediction: the customers predicted 6 and 4 hold 4 + 6 of 14.
    assert top_capture(actual, predicted, share=0.5) == pytest.approx(10 / 14)
    assert top_capture(actual, predicted, share=0.25) == pytest.approx(4 / 14)
    assert coverage(actual, [0, 3, 5, 0], [1, 4, 6, 5]) == pytest.approx(0.5)
    # d = 0, 1, −1, 0: 1 − 6·2 / (4·15) = 0.8.
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    out = evaluate_value(actual, predicted, np.zeros(4), np.full(4, 5.0))
    assert out["coverage"] == pytest.approx(0.75)
    assert out["interval_width"] == pytest.approx(5.0)
    assert out["rows"] == 4.0
    assert "coverage" not in evaluate_value(actual, predicted)


def test_tier_thresholds_and_rule_by_hand() -> None:
    settings = ValueSettings(horizon_days=365, top_share=0.8, growth_ratio=1.5)
    clv = np.array([400, 300, 100, 60, 50, 40, 30, 20.0])
    thresholds = fit_thresholds(clv, settings)
    # 400 + 300 + 100 = 800 = 80% of 1000: the third customer completes the share.
    assert thresholds.a_threshold == 100.0
    assert thresholds.median_clv == 55.0  # (60 + 50) / 2
    spend_365 = np.array([300, 100, 90, 30, 10, 0, 0, 50.0])
    margin = np.array([10, -5, 3, 2, 1, -0.5, 4, 2.0])
    tiers = assign_tiers(clv, margin, spend_365, thresholds, settings).tolist()
    # 300 is top value but costs more than it brings: D first. 60 ≥ 1.5 × 30 and ≥ the median: B.
    # 50 is below the median (C); 30 and 20 are below it too, whatever their run-rate (C).
    assert tiers == ["A", "D", "A", "B", "C", "D", "C", "C"]
    # Nothing predicted: nobody is A.
    assert fit_thresholds(np.zeros(3), settings).a_threshold == NO_A


def test_growth_scales_the_run_rate_to_the_horizon() -> None:
    # H = 73 days: a 365-day spend of 100 is a run-rate of 20 over H; 30 ≥ 1.5 × 20 is growth.
    settings = ValueSettings(horizon_days=73, growth_ratio=1.5)
    thresholds = fit_thresholds(np.array([1000, 30, 10.0]), settings)
    assert assign_tiers(np.array([30.0]), np.array([1.0]), np.array([100.0]), thresholds, settings).tolist() == ["B"]
    assert assign_tiers(np.array([30.0]), np.array([1.0]), np.array([101.0]), thresholds, settings).tolist() == ["C"]


def test_margin_and_cost_to_serve_by_hand() -> None:
    settings = ValueSettings(horizon_days=365, gross_margin=0.3, ticket_cost=12, complaint_cost=60)
    frame = pd.DataFrame({"value_tickets_365": [2, 0], "value_complaints_365": [1, 0]})
    assert cost_to_serve(frame, settings).tolist() == [84.0, 0.0]
    # 0.3 × 100 − (2 × 12 + 60) = −54: a D customer; no tickets: 0.3 × 100 = 30.
    assert expected_margin(np.array([100.0, 100.0]), frame, settings).tolist() == pytest.approx([-54.0, 30.0])
    half = ValueSettings(horizon_days=73, gross_margin=0.3, ticket_cost=12, complaint_cost=60)
    assert cost_to_serve(frame, half).tolist() == pytest.approx([84.0 / 5, 0.0])
