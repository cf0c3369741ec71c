"""What world to generate (``WorldConfig``) and its fixed calendar (``Calendar``).

Time inside the simulator is integer seconds since the history origin (the
start date, 00:00 UTC). The history is cut into weeks; every decision epoch and
every truth cutoff falls on a week boundary, so a feature pipeline that counts
events in ``[cutoff - 28 days, cutoff)`` sees exactly the weekly buckets the
simulator counted. Nothing here depends on today's date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

DAY_S = 86_400
WEEK_S = 7 * DAY_S
US_PER_S = 1_000_000

#: Churn decisions every 13 weeks (91 days); the label window is 90 days, so a
#: subscription decided at one epoch has ended before the next epoch starts.
CHURN_EPOCH_WEEKS = 13
CHURN_WINDOW_DAYS = 90
#: Lead decisions every 9 weeks (63 days) with a 60-day conversion window.
LEAD_EPOCH_WEEKS = 9
LEAD_WINDOW_DAYS = 60


class WorldConfig(BaseModel):
    """The knobs of one synthetic world. The same config gives the same world."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customers: int = Field(20_000, ge=10, description="customers at the end of the history")
    leads: int = Field(10_000, ge=0, description="leads created over the history")
    products: int = Field(200, ge=5, description="products in the catalogue")
    seed: int = Field(1, ge=0, description="random seed")
    start: date = Field(date(2022, 1, 1), description="history origin (00:00 UTC)")
    weeks: int = Field(
        208, ge=110, le=1000, description="history length in weeks (>= 24 months plus warm-up)"
    )
    initial_share: float = Field(
        0.35, ge=0.0, le=1.0, description="share of direct customers signed up before the origin"
    )
    first_signup: date = Field(date(2016, 1, 1), description="earliest sign-up of the initial base")
    factors: int = Field(8, ge=2, le=64, description="latent dimensions of the affinity model")
    truth_warmup_weeks: int = Field(
        26, ge=16, description="history before the first truth cutoff (signals need 16 weeks)"
    )

    @model_validator(mode="after")
    def _check_dates(self) -> WorldConfig:
        if self.first_signup.year < 1990 or self.first_signup >= self.start:
            raise ValueError("first_signup must be in [1990-01-01, start)")
        return self


@dataclass(frozen=True)
class Calendar:
    """Week grid, decision epochs and truth cutoffs of one world."""

    origin: datetime
    weeks: int
    truth_warmup_weeks: int

    @classmethod
    def of(cls, config: WorldConfig) -> Calendar:
        origin = datetime(config.start.year, config.start.month, config.start.day, tzinfo=UTC)
        return cls(origin=origin, weeks=config.weeks, truth_warmup_weeks=config.truth_warmup_weeks)

    @property
    def origin_us(self) -> int:
        return int(self.origin.timestamp()) * US_PER_S

    @property
    def end(self) -> datetime:
        """End of the history (exclusive): no event happens at or after it."""
        return self.origin + timedelta(weeks=self.weeks)

    @property
    def end_s(self) -> int:
        return self.weeks * WEEK_S

    def _epochs(self, every: int) -> list[int]:
        # An epoch is kept only if its whole period fits in the history, so every
        # decision's outcome (an end or a conversion) is inside the tables.
        return [w for w in range(0, self.weeks - every + 1, every)]

    @property
    def churn_epoch_weeks(self) -> list[int]:
        return self._epochs(CHURN_EPOCH_WEEKS)

    @property
    def lead_epoch_weeks(self) -> list[int]:
        return self._epochs(LEAD_EPOCH_WEEKS)

    @property
    def churn_truth_weeks(self) -> list[int]:
        return [w for w in self.churn_epoch_weeks if w >= self.truth_warmup_weeks]

    @property
    def lead_truth_weeks(self) -> list[int]:
        return [w for w in self.lead_epoch_weeks if w >= self.truth_warmup_weeks]

    def week_datetime(self, week: int) -> datetime:
        return self.origin + timedelta(weeks=week)

    def to_us(self, seconds: np.ndarray) -> np.ndarray:
        """Simulator seconds (relative to the origin) as epoch microseconds (int64)."""
        return seconds.astype(np.int64) * US_PER_S + self.origin_us

    def seconds_of(self, moment: datetime) -> int:
        return int((moment - self.origin).total_seconds())
