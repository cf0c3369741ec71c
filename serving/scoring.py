"""Scoring on the request path: feature values -> booster input -> probability, score, grade, reasons.

``training.model.ScoringModel`` owns the model (booster, calibrator, grading,
spec); this module feeds it the online store's columns straight, without a
pandas frame: the matrix comes from the model's own ``Encoder`` (the one
training and batch scoring use) and the reasons from the same rule
(``reason_lists``), so the service answers exactly what the model would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from training.calibration import score_1_99
from training.encoding import Encoder
from training.model import ModelSpec, Reason, ScoringModel, reason_lists


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
        self.encoder = self.model.encoder

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
        """The ``top`` features pushing each row up and down (exact TreeSHAP, log-odds), by
        the rule ``ScoringModel.reasons`` uses."""
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

        return reason_lists(contrib, names, value, top)
