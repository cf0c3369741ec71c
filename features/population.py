"""Who a model can score at a date, and why not: one rule per population, two evaluators.

A model is only meaningful for the entities it was trained on: churn risk for
customers who can still churn (an active subscriber, or a recent buyer in
transactional mode), lead scoring for leads that are still open. Each rule is
written here once and evaluated two ways:

* ``from_lake(lake, as_of)``: the ids in the population, from the raw tables
  (batch scoring, the labels of training and the drift reference use this);
* ``why_not(values, n)``: per online feature row, ``None`` if eligible or a
  short reason if not (serving uses this, it has no lake). It reads fields of
  the entity's feature view computed as of the same snapshot with the same
  predicate, so both evaluators agree on every snapshot
  (``tests/test_population.py`` holds them equal on a synthetic world).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.lake import read_table
from crmdata.times import as_utc
from features.catalog import JOIN_KEYS
from features.labels import CHURN_LOOKBACK_DAYS, churn_population, open_leads

ChurnMode = Literal["subscription", "transactional"]


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ActiveCustomers:
    """Churn's population: customers with an active subscription at the date (subscription
    mode), or with an order in the look-back before it (transactional mode)."""

    description: str = (
        "subscription mode: customers with an active subscription; transactional mode: "
        f"customers with an order in the last {CHURN_LOOKBACK_DAYS} days"
    )

    def fields(self, mode: str | None) -> tuple[str, ...]:
        if mode == "transactional":
            return (f"orders_{CHURN_LOOKBACK_DAYS}d",)
        return ("subscription_active",)

    def from_lake(self, lake: Path, as_of: datetime, mode: str | None = None) -> pl.DataFrame:
        return churn_population(lake, as_of, mode=mode or "auto")  # type: ignore[arg-type]

    def why_not(self, values: Mapping[str, Sequence[Any]], n: int, mode: str | None = None) -> list[str | None]:
        (field,) = self.fields(mode)
        column = values.get(field, [None] * n)
        if mode == "transactional":
            return [None if (_number(v) or 0) > 0 else f"no order in the last {CHURN_LOOKBACK_DAYS} days"
                    for v in column]
        return [None if _number(v) == 1 else "no active subscription" for v in column]


@dataclass(frozen=True)
class OpenLeads:
    """Lead scoring's population: leads created before the date, neither converted nor lost
    before it (``lead_status`` of the lead feature view is that predicate, as of the snapshot)."""

    description: str = "leads that are open: created before the date, neither converted nor lost before it"

    def fields(self, mode: str | None = None) -> tuple[str, ...]:
        return ("lead_status", "lead_closed_at")

    def from_lake(self, lake: Path, as_of: datetime, mode: str | None = None) -> pl.DataFrame:
        return open_leads(lake, as_of)

    def why_not(self, values: Mapping[str, Sequence[Any]], n: int, mode: str | None = None) -> list[str | None]:
        status = values.get("lead_status", [None] * n)
        closed = values.get("lead_closed_at", [None] * n)
        out: list[str | None] = []
        for s, at in zip(status, closed, strict=True):
            if s == "open":
                out.append(None)
            elif s in ("converted", "lost"):
                out.append(f"lead closed: {s} on {at}" if at else f"lead closed: {s}")
            else:
                out.append("lead status unknown (no lead_status in the online store)")
        return out


@dataclass(frozen=True)
class SignedUpCustomers:
    """Next-best-product's population: every customer who signed up before the date. Any
    customer with an online feature row is one."""

    description: str = "every customer who signed up before the date"

    def fields(self, mode: str | None = None) -> tuple[str, ...]:
        return ()

    def from_lake(self, lake: Path, as_of: datetime, mode: str | None = None) -> pl.DataFrame:
        key = JOIN_KEYS["customer"]
        customers = read_table(lake, "customers", [key, "signup_at"])
        if customers is None:
            raise CrmscoreError(f"{lake}: no customers table")
        return customers.filter(pl.col("signup_at") < as_utc(as_of)).select(key).unique().sort(key)

    def why_not(self, values: Mapping[str, Sequence[Any]], n: int, mode: str | None = None) -> list[str | None]:
        return [None] * n


Population = ActiveCustomers | OpenLeads | SignedUpCustomers
