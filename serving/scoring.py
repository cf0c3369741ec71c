"""Scoring on the request path: feature values -> booster input -> the answer and its reasons.

``training.model.ScoringModel`` owns the model (booster, calibrator, grading,
spec), ``training.value.scorer.ValueModel`` the customer-value one; this module
feeds them the online store's columns straight, without a pandas frame: the
matrix comes from the model's own ``Encoder`` (the one training and batch
scoring use) and the reasons from the same rule
(``reason_lists``), so the service answers exactly what the model would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from training.booster_predict import BoosterPredict
from training.calibration import score_1_99
from training.encoding import Encoder
from training.model import ModelSpec, Reason, ScoringModel, reason_lists
from training.value.spec import COMPLAINTS_365, RUN_RATE_DAYS, SPEND_365, TICKETS_365
from training.value.tiers import assign_tiers

if TYPE_CHECKING:
    from training.value.scorer import ValueModel
    from training.value.spec import ValueSettings


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
        self.predict = BoosterPredict(self.model.booster)
        # The explainer's tables are built on its first call: here, at load, not in a request.
        self.model.contributions(np.full((1, len(self.encoder.features)), np.nan))

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def score(self, values: Mapping[str, Sequence[Any]], n: int, explain: bool, top: int = 3) -> Scored:
        x = self.encoder.matrix(values, n)
        p = self.model.calibrator.apply(self.predict(x))
        reasons = self.reasons(x, values, top) if explain else None
        return Scored(p, score_1_99(p), self.model.grading.assign(p), reasons)

    def reasons(self, x: np.ndarray, values: Mapping[str, Sequence[Any]], top: int) -> list[dict[str, list[Reason]]]:
        """The ``top`` features pushing each row up and down (exact TreeSHAP, log-odds), by
        the rule ``ScoringModel.reasons`` uses."""
        return _reasons(self.model.contributions(x), self.encoder.features, values, len(x), top)


# --- customer value ------------------------------------------------------------------------


@dataclass
class ValueScored:
    clv: np.ndarray
    clv_low: np.ndarray
    clv_high: np.ndarray
    expected_margin: np.ndarray
    tier: np.ndarray  # "A".."D" (object)
    reasons: list[dict[str, list[Reason]]] | None


def value_outputs(model: ValueModel, x: np.ndarray, columns: Mapping[str, Any], n: int) -> ValueScored:
    """What ``ValueModel.predict`` answers, from the encoded matrix ``x``: the mean and the
    interval from the model's boosters, the tier by the model's rule (``assign_tiers``), the
    margin as ``training.value.spec.expected_margin`` computes it. ``columns`` maps names to
    values (lists, numpy or Arrow arrays) and holds the run-rate columns the store serves.

    No pandas frame: ``expected_margin`` and ``run_rate`` take one, and building it cost
    ~1 ms a request, twice the model. ``run_rates`` and ``margin`` are their array twins
    (tests/test_serving_value.py holds the answers equal to ``ValueModel.predict``)."""
    clv = model.mean(x)
    low, high = model.interval(x)
    spend, tickets, complaints = (run_rates(columns, c, n) for c in (SPEND_365, TICKETS_365, COMPLAINTS_365))
    margin = expected_margin_of(clv, tickets, complaints, model.settings)
    tier = assign_tiers(clv, margin, spend, model.spec.thresholds, model.settings)
    return ValueScored(clv, low, high, margin, tier, None)


def run_rates(columns: Mapping[str, Any], name: str, n: int) -> np.ndarray:
    """``training.value.spec.run_rate`` on a column of any kind: floats, missing (or not
    served) -> 0 (no spend, no tickets)."""
    column = columns.get(name)
    if column is None:
        return np.zeros(n)
    if hasattr(column, "to_numpy") and not isinstance(column, np.ndarray):  # Arrow
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=float)
    else:
        values = np.array([np.nan if v is None else v for v in column], dtype=float)
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def expected_margin_of(clv: np.ndarray, tickets: np.ndarray, complaints: np.ndarray,
                       settings: ValueSettings) -> np.ndarray:
    """``training.value.spec.expected_margin`` on arrays: gross margin on clv minus the
    cost to serve (last year's tickets and complaints at unit cost, scaled to the horizon)."""
    cost = (settings.ticket_cost * tickets + settings.complaint_cost * complaints) * settings.horizon_days / RUN_RATE_DAYS
    return settings.gross_margin * np.asarray(clv, dtype=float) - cost


@dataclass
class ValueScorer:
    """A loaded customer-value champion, ready for the request path (no pandas frame of
    the features: the model's ``Encoder`` reads the online store's columns straight)."""

    model: ValueModel
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        # The explainers' tables are built on their first call: here, at load, not in a request.
        self.model.contributions(np.full((1, len(self.model.feature_names)), np.nan))

    def score(self, values: Mapping[str, Sequence[Any]], n: int, explain: bool, top: int = 3) -> ValueScored:
        x = self.model.encoder.matrix(values, n)
        scored = value_outputs(self.model, x, values, n)
        if explain:
            scored.reasons = self.reasons(x, values, top)
        return scored

    def reasons(self, x: np.ndarray, values: Mapping[str, Sequence[Any]], top: int) -> list[dict[str, list[Reason]]]:
        """The ``top`` features pushing each row's clv up and down: the model's exact
        contributions to log(clv), picked by the rule ``ValueModel.reasons`` uses."""
        return _reasons(self.model.contributions(x), self.model.feature_names, values, len(x), top)


def _reasons(contrib: np.ndarray, names: list[str], values: Mapping[str, Sequence[Any]], n: int,
             top: int) -> list[dict[str, list[Reason]]]:
    as_python: dict[int, list[Any]] = {}  # feature index -> its values as Python objects

    def value(j: int, i: int) -> Any:
        column = as_python.get(j)
        if column is None:
            raw = values.get(names[j])
            column = as_python[j] = ([None] * n if raw is None
                                     else raw.tolist() if isinstance(raw, np.ndarray) else list(raw))
        return plain(column[i])

    return reason_lists(contrib, names, value, top)
