"""The A–D customer tiers, from predicted value, predicted margin and the current run-rate.

One rule, applied in this order to each customer:

* **D** — expected margin < 0: the predicted cost to serve exceeds the gross margin on
  the predicted spend;
* **A** — predicted value ≥ ``a_threshold``: the highest-value customers who together
  make ``top_share`` (default 80%) of the predicted value of the holdout;
* **B** — growth potential: predicted value ≥ ``growth_ratio`` × the last year's spend
  scaled to the horizon (the run-rate), and ≥ the holdout's median predicted value
  (so a dormant customer predicted to buy a little is not "growth");
* **C** — the rest.

The thresholds are computed once, on the holdout, when the model is trained, and stored
with it, so a tier means the same thing in every scoring run of a version.
"""

from __future__ import annotations

import numpy as np

from training.value.spec import RUN_RATE_DAYS, TierThresholds, ValueSettings

TIERS = ("A", "B", "C", "D")
#: Used as the A threshold when no customer has positive predicted value: nobody is A.
NO_A = float(np.finfo(np.float64).max)


def fit_thresholds(clv: np.ndarray, settings: ValueSettings) -> TierThresholds:
    """The A threshold (the clv at which the top customers reach ``top_share`` of the total) and the median."""
    values = np.sort(np.asarray(clv, dtype=float))[::-1]
    total = float(values.sum())
    if len(values) == 0 or total <= 0:
        return TierThresholds(a_threshold=NO_A, median_clv=0.0)
    # The fewest customers whose cumulative predicted value reaches the share.
    k = int(np.searchsorted(np.cumsum(values), settings.top_share * total, side="left"))
    return TierThresholds(a_threshold=float(values[min(k, len(values) - 1)]), median_clv=float(np.median(values)))


def assign_tiers(clv: np.ndarray, margin: np.ndarray, spend_365: np.ndarray, thresholds: TierThresholds,
                 settings: ValueSettings) -> np.ndarray:
    """The tier of each customer ("A".."D", an object array), by the rule in the module docstring."""
    clv, margin = np.asarray(clv, dtype=float), np.asarray(margin, dtype=float)
    run_rate = np.asarray(spend_365, dtype=float) * settings.horizon_days / RUN_RATE_DAYS
    growth = (clv >= settings.growth_ratio * run_rate) & (clv >= thresholds.median_clv)
    return np.select(
        [margin < 0, clv >= thresholds.a_threshold, growth],
        ["D", "A", "B"],
        default="C",
    ).astype(object)
