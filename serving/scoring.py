"""Scoring on the request path: feature values -> booster input -> probability, score, grade, reasons.

``training.model.ScoringModel`` owns the model (booster, calibrator, grading,
spec); this module only feeds it faster. ``prepare_features`` builds a pandas
frame column by column (tens of milliseconds for one row), so ``Encoder``
builds the same float matrix with plain Python and numpy — the tests hold it
to ``prepare_features`` value for value, and ``reasons`` to
``ScoringModel.reasons``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from training.calibration import score_1_99
from training.model import ModelSpec, Reason, ScoringModel

NAN = float("nan")


class Encoder:
    """Feature values -> the booster's float matrix, exactly as ``prepare_features``.

    Categoricals become their code in the spec's category list (unseen or
    missing -> NaN); numbers become floats (missing or non-numeric -> NaN).
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.features = list(spec.features)
        self.codes: dict[str, dict[str, float]] = {
            col: {c: float(i) for i, c in enumerate(cats)} for col, cats in spec.categories.items()
        }

    def matrix(self, values: Mapping[str, Sequence[Any]], n: int) -> np.ndarray:
        x = np.full((n, len(self.features)), NAN)
        numeric: list[int] = []
        for j, col in enumerate(self.features):
            column = values.get(col)
            if column is None:
                continue  # not given: missing
            codes = self.codes.get(col)
            if codes is None:
                numeric.append(j)
            else:
                x[:, j] = [NAN if _missing(v) else codes.get(str(v), NAN) for v in column]
        if not numeric:
            return x
        # All numeric columns in one C-level cast (one numpy call per column cost more than
        # the model for a single row): numbers, bools, numeric strings and None (-> NaN)
        # convert exactly as float() and _number do.
        block = np.empty((len(numeric), n), dtype=object)
        try:
            for row, j in enumerate(numeric):
                block[row] = values[self.features[j]]
            x[:, numeric] = block.astype(np.float64).T
        except (TypeError, ValueError):  # a non-numeric value somewhere: NaN for it alone
            for j in numeric:
                x[:, j] = [_number(v) for v in values[self.features[j]]]
        return x


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _number(v: Any) -> float:
    if v is None:
        return NAN
    if isinstance(v, bool | int | float):
        return float(v)
    try:
        return float(v)  # numeric strings, as pd.to_numeric(errors="coerce") reads them
    except (TypeError, ValueError):
        return NAN


def plain(value: Any) -> Any:
    """A JSON-safe feature value: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


@dataclass
class Scored:
    probability: np.ndarray
    score: np.ndarray
    grade: np.ndarray
    reasons: list[dict[str, list[Reason]]] | None


@dataclass
class BinaryScorer:
    """A loaded champion of a binary model, ready for the request path."""

    model: ScoringModel
    encoder: Encoder = field(init=False)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.encoder = Encoder(self.model.spec)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def score(self, values: Mapping[str, Sequence[Any]], n: int, explain: bool, top: int = 3) -> Scored:
        x = self.encoder.matrix(values, n)
        raw = np.asarray(self.model.booster.predict(x, num_threads=1), dtype=float)
        p = self.model.calibrator.apply(raw)
        reasons = self.reasons(x, values, top) if explain else None
        return Scored(p, score_1_99(p), self.model.grading.assign(p), reasons)

    def reasons(self, x: np.ndarray, values: Mapping[str, Sequence[Any]], top: int) -> list[dict[str, list[Reason]]]:
        """The ``top`` features pushing each row up and down (exact TreeSHAP, log-odds), as
        ``ScoringModel.reasons`` computes them."""
        contrib = np.asarray(self.model.booster.predict(x, pred_contrib=True, num_threads=1))[:, :-1]
        names = self.encoder.features
        as_python: dict[int, list[Any]] = {}  # feature index -> its values as Python objects

        def value(j: int, i: int) -> Any:
            column = as_python.get(j)
            if column is None:
                raw = values.get(names[j])
                column = as_python[j] = ([None] * len(x) if raw is None
                                         else raw.tolist() if isinstance(raw, np.ndarray) else list(raw))
            return plain(column[i])

        out = []
        for i, row in enumerate(contrib):
            order = np.argsort(row)
            up = [j for j in order[::-1][:top] if row[j] > 0]
            down = [j for j in order[:top] if row[j] < 0]
            out.append({"up": [Reason(names[j], value(j, i), float(row[j])) for j in up],
                        "down": [Reason(names[j], value(j, i), float(row[j])) for j in down]})
        return out
