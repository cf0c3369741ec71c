"""What a report is made of: the month grid it counts in, and the JSON it hands out.

Every section is a ``Section``: its definitions (written on the page), one-line notes
(what is missing and why), headline figures and tables as lists of row dicts (the
JSON a scheduler reads, and what the page renders).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError

Mode = Literal["subscription", "transactional"]
#: Section keys, in page order (the browser test and the JSON use them).
SECTIONS: tuple[str, ...] = ("customers", "value", "funnel", "satisfaction", "monitor")
#: The default months shown, and the default "no order within W days" of transactional churn
#: (the churn model's default label window, training/tasks.py).
DEFAULT_MONTHS = 12
DEFAULT_WINDOW_DAYS = 90


@dataclass(frozen=True)
class Grid:
    """The report's months: ``months`` calendar months ending with the one holding the last
    instant before ``as_of``. A month is ``[start, end)``; the last one ends at ``as_of``
    (events at or after ``as_of`` are not counted anywhere)."""

    as_of: datetime
    starts: tuple[datetime, ...]

    @classmethod
    def build(cls, as_of: datetime, months: int) -> Grid:
        if months < 1:
            raise CrmscoreError(f"--months must be at least 1, got {months}")
        as_of = as_of.astimezone(UTC)
        last = as_of - timedelta(microseconds=1)
        year, month = last.year, last.month
        starts: list[datetime] = []
        for _ in range(months):
            starts.append(datetime(year, month, 1, tzinfo=UTC))
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        return cls(as_of=as_of, starts=tuple(reversed(starts)))

    @property
    def ends(self) -> tuple[datetime, ...]:
        return (*self.starts[1:], self.as_of)

    @property
    def labels(self) -> list[str]:
        return [f"{s:%Y-%m}" for s in self.starts]

    @property
    def first(self) -> datetime:
        return self.starts[0]


class Section(BaseModel):
    key: str
    title: str
    available: bool = True
    notes: list[str] = Field(default_factory=list, description="what is missing or approximate, one line each")
    definitions: dict[str, str] = Field(default_factory=dict)
    summary: dict[str, Any] = Field(default_factory=dict, description="headline figures")
    tables: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)


class Alert(BaseModel):
    """A past scoring run whose realized AUC fell below its model's holdout AUC − tolerance."""

    task: str
    as_of: str
    model_version: str
    realized_auc: float
    holdout_auc: float
    message: str


class Report(BaseModel):
    as_of: datetime
    months: list[str]
    mode: Mode | None = Field(None, description="subscription when the lake has subscriptions, else transactional")
    window_days: int
    generated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    sections: dict[str, Section] = Field(default_factory=dict)
    alerts: list[Alert] = Field(default_factory=list, description="monitor flags a scheduler can alert on")
    seconds: dict[str, float] = Field(default_factory=dict, description="time per section")
