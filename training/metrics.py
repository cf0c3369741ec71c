"""Binary-classification metrics for scores that people act on.

``evaluate`` returns one dict: the overall metrics and the same per segment, so
MLflow, the model card and the promotion gate all read the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

TOP_FRACTIONS: tuple[float, ...] = (0.1, 0.2)
ECE_BINS = 10
#: Below this many rows, or without both classes, a segment's metrics are not reported.
MIN_SEGMENT_ROWS = 50

Array = npt.ArrayLike


def expected_calibration_error(y: Array, p: Array, bins: int = ECE_BINS) -> float:
    """ECE with equal-width bins: sum over bins of (share of rows) × |observed rate − mean score|."""
    y_arr, p_arr = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    # Bin i holds [i/bins, (i+1)/bins); a score of exactly 1.0 belongs to the last bin.
    idx = np.minimum((p_arr * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins)
    observed = np.bincount(idx, weights=y_arr, minlength=bins)
    predicted = np.bincount(idx, weights=p_arr, minlength=bins)
    filled = counts > 0
    gaps = np.abs(observed[filled] - predicted[filled]) / counts[filled]
    return float(np.sum(gaps * counts[filled]) / len(y_arr))


def top_fraction(y: Array, p: Array, fraction: float) -> tuple[float, float]:
    """(lift, capture rate) of the top ``fraction`` of rows by score.

    The top set is the ceil(fraction × n) highest scores; ties at the boundary are
    broken by row order (stable sort), so the result is deterministic.
    Lift = positive rate in the top set / overall positive rate.
    Capture = positives in the top set / all positives.
    """
    y_arr, p_arr = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    n = len(y_arr)
    k = max(1, math.ceil(fraction * n))
    order = np.argsort(-p_arr, kind="stable")[:k]
    positives = y_arr.sum()
    if positives == 0:
        return float("nan"), float("nan")
    hits = y_arr[order].sum()
    return float((hits / k) / (positives / n)), float(hits / positives)


def binary_metrics(y: Array, p: Array) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log loss, Brier, ECE, lift and capture at the top 10% and 20%."""
    y_arr = np.asarray(y, dtype=int)
    p_arr = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    both = 0 < y_arr.sum() < len(y_arr)
    out = {
        "rows": float(len(y_arr)),
        "positive_rate": float(y_arr.mean()) if len(y_arr) else float("nan"),
        "roc_auc": float(roc_auc_score(y_arr, p_arr)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y_arr, p_arr)) if both else float("nan"),
        "log_loss": float(log_loss(y_arr, p_arr, labels=[0, 1])),
        "brier": float(brier_score_loss(y_arr, p_arr)),
        "ece": expected_calibration_error(y_arr, p_arr),
    }
    for fraction in TOP_FRACTIONS:
        lift, capture = top_fraction(y_arr, p_arr, fraction)
        pct = round(fraction * 100)
        out[f"lift_top{pct}"] = lift
        out[f"capture_top{pct}"] = capture
    return out


def evaluate(y: Array, p: Array, segments: Sequence[object] | None = None) -> dict:
    """One metrics dict: ``{"overall": {...}, "by_segment": {segment: {...}}}``.

    Segments with fewer than MIN_SEGMENT_ROWS rows or a single class are left out,
    since their AUC would be noise or undefined.
    """
    y_arr, p_arr = np.asarray(y), np.asarray(p)
    result: dict = {"overall": binary_metrics(y_arr, p_arr), "by_segment": {}}
    if segments is not None:
        seg = np.asarray(segments, dtype=object)
        for value in sorted({str(s) for s in seg}):
            mask = seg.astype(str) == value
            ys = y_arr[mask]
            if mask.sum() >= MIN_SEGMENT_ROWS and 0 < ys.sum() < len(ys):
                result["by_segment"][value] = binary_metrics(ys, p_arr[mask])
    return result


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"overall": {"roc_auc": x}}`` → ``{"roc_auc": x}``; segments as ``segment.smb.roc_auc``.

    MLflow metric names allow dots, so the flat form keeps the structure readable.
    """
    flat = {f"{prefix}{k}": v for k, v in metrics["overall"].items()}
    for segment, values in metrics.get("by_segment", {}).items():
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in segment)
        flat.update({f"{prefix}segment.{safe}.{k}": v for k, v in values.items()})
    return {k: v for k, v in flat.items() if not math.isnan(v)}  # MLflow rejects NaN-only noise
