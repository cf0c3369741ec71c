"""What a registered customer-value version carries besides its boosters, as JSON.

Nothing here imports LightGBM or MLflow: serving and batch scoring read these
objects from the version's artifacts (``value.json``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from features.catalog import VALUE_WINDOW
from training.model import ModelSpec

#: Days the run-rate columns cover.
RUN_RATE_DAYS = VALUE_WINDOW
#: The run-rate columns the margin and the B tier read (features of the customer_value view,
#: named as features/catalog.py names them).
SPEND_365 = f"value_spend_{VALUE_WINDOW}"
TICKETS_365 = f"value_tickets_{VALUE_WINDOW}"
COMPLAINTS_365 = f"value_complaints_{VALUE_WINDOW}"

Kind = Literal["tweedie", "two_part"]


class ValueSettings(BaseModel):
    """The business settings of a customer-value model (stored with every version). The unit costs
    and margin default to the synthetic world's (``crmdata.synth.params``), so its truth compares."""

    horizon_days: int = Field(365, gt=0, description="H: spend is predicted over the H days after the as_of date")
    gross_margin: float = Field(0.30, ge=0, le=1, description="gross margin on spend (share of the amount)")
    ticket_cost: float = Field(25.0, ge=0, description="cost to serve one support ticket")
    complaint_cost: float = Field(100.0, ge=0, description="cost to serve one complaint")
    top_share: float = Field(0.80, gt=0, lt=1, description="A: the top customers making this share of predicted value")
    interval_level: float = Field(0.80, gt=0, lt=1, description="nominal coverage of the per-customer interval")
    growth_ratio: float = Field(1.5, gt=0, description="B: predicted value at least this many times the run-rate")


class TierThresholds(BaseModel):
    """Computed on the holdout's predictions when the model is trained."""

    a_threshold: float
    """Predicted value at which the highest-value customers make ``top_share`` of predicted value."""
    median_clv: float
    """Median predicted value (B needs at least this much)."""


class ValueSpec(BaseModel):
    """Everything beside the boosters: the features, the settings, the objective chosen, the interval."""

    model: ModelSpec
    settings: ValueSettings
    kind: Kind
    """``tweedie``: one booster (clv.lgb); ``two_part``: P(buy) (buy.lgb) × E[spend | buy] (spend.lgb)."""
    scale: float = 1.0
    """Multiplies the boosters' mean: so the validation fold's total is matched, or, for a model of a
    shorter window, so its total at the training date is the peer's corrected for its bias."""
    conformal: float = 0.0
    """Conformalized quantile regression: widen [q_low, q_high] by this on both sides."""
    thresholds: TierThresholds
    window_days: int | None = None
    """The label window the boosters learned, when shorter than the horizon (too little history
    for H-day windows); None: the horizon itself."""
    horizon_factor: float = 1.0
    """Extends a ``window_days`` prediction to the horizon: the probabilistic peer's expected spend
    over H ÷ over the window, summed over the customers at the training date (1 when they agree)."""


def run_rate(frame: pd.DataFrame, column: str) -> np.ndarray:
    """A run-rate column as floats (missing: 0 — no spend, no tickets)."""
    if column not in frame.columns:
        return np.zeros(len(frame))
    return pd.to_numeric(frame[column], errors="coerce").fillna(0.0).to_numpy(dtype=float)


def cost_to_serve(frame: pd.DataFrame, settings: ValueSettings) -> np.ndarray:
    """Predicted cost to serve over H: unit costs × the last year's tickets and complaints, scaled to H."""
    per_year = (settings.ticket_cost * run_rate(frame, TICKETS_365)
                + settings.complaint_cost * run_rate(frame, COMPLAINTS_365))
    return per_year * settings.horizon_days / RUN_RATE_DAYS


def expected_margin(clv: np.ndarray, frame: pd.DataFrame, settings: ValueSettings) -> np.ndarray:
    """Gross margin on the predicted spend minus the predicted cost to serve."""
    return settings.gross_margin * np.asarray(clv, dtype=float) - cost_to_serve(frame, settings)
