"""Probability calibration and grade/band thresholds, stored as plain JSON.

Both are fitted on the validation fold (later cutoffs than training), never on
the training rows, and travel with the model as JSON so that serving and batch
scoring apply exactly the same mapping without unpickling anything.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

Method = Literal["isotonic", "platt"]


class Calibrator(BaseModel):
    """Maps a raw model score to a calibrated probability.

    isotonic: piecewise-linear interpolation through (x, y) knots, clipped at the ends;
    platt: sigmoid(a × logit(raw) + b).
    """

    method: Method
    x: list[float] = []
    y: list[float] = []
    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, raw: npt.ArrayLike, labels: npt.ArrayLike, method: Method = "isotonic") -> Calibrator:
        raw_arr, y_arr = np.asarray(raw, dtype=float), np.asarray(labels, dtype=float)
        if method == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw_arr, y_arr)
            return cls(method=method, x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())
        lr = LogisticRegression(C=1e6).fit(_logit(raw_arr).reshape(-1, 1), y_arr)
        return cls(method=method, a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))

    def apply(self, raw: npt.ArrayLike) -> np.ndarray:
        raw_arr = np.asarray(raw, dtype=float)
        if self.method == "isotonic":
            p = np.interp(raw_arr, self.x, self.y)
        else:
            p = 1.0 / (1.0 + np.exp(-(self.a * _logit(raw_arr) + self.b)))
        # Keep away from exact 0/1: a CRM score of "certain" is never honest, and log loss
        # of the next holdout would be infinite.
        return np.clip(p, 1e-4, 1 - 1e-4)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


class Grading(BaseModel):
    """Ordered labels and the probability thresholds between them.

    The rule: thresholds are quantiles of the calibrated probability on the
    validation fold, so the top ``shares[0]`` of validation rows get ``labels[0]``,
    the next ``shares[1]`` get ``labels[1]``, and so on. A probability at or above
    ``thresholds[i]`` gets ``labels[i]`` (first match wins).
    """

    labels: list[str]
    shares: list[float]
    thresholds: list[float]

    @classmethod
    def fit(cls, probabilities: npt.ArrayLike, labels: list[str], shares: list[float]) -> Grading:
        if len(shares) != len(labels) or not np.isclose(sum(shares), 1.0):
            raise ValueError("need one share per label, summing to 1")
        p = np.asarray(probabilities, dtype=float)
        cumulative = np.cumsum(shares)[:-1]
        thresholds = [float(np.quantile(p, 1.0 - c)) for c in cumulative]
        return cls(labels=labels, shares=shares, thresholds=thresholds)

    def assign(self, probabilities: npt.ArrayLike) -> np.ndarray:
        p = np.asarray(probabilities, dtype=float)
        # Count thresholds each probability clears: 0 → the lowest label.
        cleared = np.zeros(p.shape, dtype=int)
        for t in self.thresholds:
            cleared += p >= t
        ordered = np.asarray(self.labels[::-1], dtype=object)
        # cleared == len(thresholds) → labels[0] (best/highest); 0 → labels[-1].
        return ordered[cleared]




def score_1_99(probabilities: npt.ArrayLike) -> np.ndarray:
    """The 1–99 score CRM screens show: the calibrated probability in percent, clipped."""
    return np.clip(np.rint(np.asarray(probabilities, dtype=float) * 100), 1, 99).astype(int)
