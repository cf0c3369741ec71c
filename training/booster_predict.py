"""A booster's prediction on the request path, without ``Booster.predict``'s per-call setup."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call


class BoosterPredict:
    """``booster.predict(x, num_threads=1)`` (probabilities for a binary model) on a float64
    matrix, by the C call ``Booster.predict`` ends in, without the Python before it.

    ``Booster.predict`` builds a predictor object per call (parameters deep-copied and
    formatted, the class count asked from the library): ~150 µs, against ~25 µs for
    the prediction of one row itself, so for a request of one customer it cost more
    than the read of its features. Same function, arguments and iterations as
    ``Booster.predict`` with its defaults (tests hold the two equal)."""

    NORMAL = 0  # C_API_PREDICT_NORMAL: the objective's output (a probability), not the raw margin
    ROW_MAJOR = 1  # C_API_DTYPE_FLOAT64 and row-major layout share the value 1
    FLOAT64 = 1

    def __init__(self, booster: Any) -> None:
        self.booster = booster
        self.classes = booster.num_model_per_iteration()
        # Booster.predict's default: the best iteration when training kept one, else all.
        self.iterations = booster.best_iteration
        self.parameters = _c_str("num_threads=1")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        rows, width = x.shape
        out = np.empty(rows * self.classes, dtype=np.float64)
        written = ctypes.c_int64(0)
        _safe_call(_LIB.LGBM_BoosterPredictForMat(
            self.booster._handle, x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(self.FLOAT64),
            ctypes.c_int32(rows), ctypes.c_int32(width), ctypes.c_int(self.ROW_MAJOR), ctypes.c_int(self.NORMAL),
            ctypes.c_int(0), ctypes.c_int(self.iterations), self.parameters, ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))))
        if written.value != out.size:
            raise ValueError(f"LightGBM wrote {written.value} predictions for {out.size}")
        return out if self.classes == 1 else out.reshape(rows, self.classes)
