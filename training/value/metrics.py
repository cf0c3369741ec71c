"""How good predicted customer value is, on one set of customers (the holdout).

Every function takes the actual spend over the horizon and a prediction of it,
one value per customer, and is exact on hand-built inputs
(tests/test_value_metrics.py):

* ``normalized_gini``: the Gini of the actual values ordered by the prediction,
  over the Gini of the actual values ordered by themselves (1: the perfect order,
  0: no better than random). Customers with tied predictions are given the mean
  actual value of their tie group, so the result does not depend on how ties are
  broken (a rule that predicts 0 for every dormant customer has many ties).
* ``spearman``: Spearman's rank correlation.
* ``decile_mape``: customers split into ten equal groups by predicted value; the
  mean over groups of |mean predicted − mean actual| / mean actual (groups whose
  actual mean is 0 are left out and counted).
* ``total_error``: Σ predicted / Σ actual − 1.
* ``top_capture``: the share of the actual value held by the top 20% by prediction
  (tie groups counted by their mean, as for the Gini).
* ``coverage``: the share of customers whose actual value lies in [low, high].
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

DECILES = 10
TOP_SHARE = 0.20


def _ordered_actual(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Actual values in descending order of prediction, each tie group replaced by its mean."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    order = np.argsort(-predicted, kind="stable")
    a, p = actual[order], predicted[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    sums = np.add.reduceat(a, starts)
    sizes = np.diff(np.r_[starts, len(a)])
    return np.repeat(sums / sizes, sizes)


def _gini(ordered: np.ndarray) -> float:
    """Σ (cumulative share of the total − cumulative share of customers) / n."""
    n, total = len(ordered), float(ordered.sum())
    if n == 0 or total == 0:
        return float("nan")
    return float(np.cumsum(ordered).sum() / total / n - (n + 1) / (2 * n))


def normalized_gini(actual: np.ndarray, predicted: np.ndarray) -> float:
    best = _gini(_ordered_actual(actual, actual))
    return _gini(_ordered_actual(actual, predicted)) / best if best else float("nan")


def spearman(actual: np.ndarray, predicted: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(actual, predicted).statistic)


def decile_table(actual: np.ndarray, predicted: np.ndarray, groups: int = DECILES) -> dict[str, np.ndarray]:
    """Per group of predicted value (1: the lowest): customers, mean predicted, mean actual.

    Groups are equal-sized slices of the customers sorted by prediction (ties broken by
    the order given), as ``numpy.array_split`` cuts them."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    order = np.argsort(predicted, kind="stable")
    parts = np.array_split(order, groups)
    return {
        "rows": np.array([len(p) for p in parts], dtype=float),
        "predicted": np.array([predicted[p].mean() if len(p) else np.nan for p in parts]),
        "actual": np.array([actual[p].mean() if len(p) else np.nan for p in parts]),
    }


def decile_mape(actual: np.ndarray, predicted: np.ndarray, groups: int = DECILES) -> float:
    table = decile_table(actual, predicted, groups)
    keep = table["actual"] > 0
    if not keep.all():
        log.info("decile MAPE: %d of %d groups have no actual spend and are left out", int((~keep).sum()), groups)
    if not keep.any():
        return float("nan")
    return float(np.mean(np.abs(table["predicted"][keep] - table["actual"][keep]) / table["actual"][keep]))


def total_error(actual: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum(actual))
    return float(np.sum(predicted)) / total - 1 if total else float("nan")


def top_capture(actual: np.ndarray, predicted: np.ndarray, share: float = TOP_SHARE) -> float:
    ordered = _ordered_actual(actual, predicted)
    total = float(ordered.sum())
    k = int(np.ceil(share * len(ordered)))
    return float(ordered[:k].sum() / total) if total else float("nan")


def coverage(actual: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    actual = np.asarray(actual, dtype=float)
    return float(np.mean((actual >= np.asarray(low)) & (actual <= np.asarray(high))))


def evaluate_value(actual: np.ndarray, predicted: np.ndarray, low: np.ndarray | None = None,
                   high: np.ndarray | None = None) -> dict[str, float]:
    """Every holdout metric of one predictor (coverage and width only when it gives an interval)."""
    actual, predicted = np.asarray(actual, dtype=float), np.asarray(predicted, dtype=float)
    out = {
        "normalized_gini": normalized_gini(actual, predicted),
        "spearman": spearman(actual, predicted),
        "decile_mape": decile_mape(actual, predicted),
        "total_error": total_error(actual, predicted),
        "top20_capture": top_capture(actual, predicted),
        "mean_actual": float(actual.mean()) if len(actual) else float("nan"),
        "mean_predicted": float(predicted.mean()) if len(predicted) else float("nan"),
        "rows": float(len(actual)),
    }
    if low is not None and high is not None:
        out["coverage"] = coverage(actual, low, high)
        out["interval_width"] = float(np.mean(np.asarray(high) - np.asarray(low)))
    return out
