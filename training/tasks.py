"""The task registry: every model crmscore trains, serves and scores, declared once.

A task is one business question with one registered model. Everything that
differs between tasks is written here and nowhere else: the registered model
name, the feature service, the entity and its key, the population (who can be
scored at a date, and why not), the label and its window, the grade scheme,
and the entry points. The CLI's choices, the trainers, serving, batch scoring
and the end-to-end pipeline all read this table.

Importing it is cheap (no Feast, LightGBM or MLflow): the trainer is named by
its import path and loaded on first use, so ``crmscore --help`` stays fast.

Adding a model: declare a ``Task`` here and write its trainer module
(``training/<key>.py``); docs/architecture.md lists the steps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from features.catalog import (
    CHURN_SERVICE,
    JOIN_KEYS,
    LEAD_SERVICE,
    NBP_SERVICE,
    VALUE_SERVICE,
    EntityName,
)
from features.population import ActiveCustomers, OpenLeads, Population, SignedUpCustomers

#: How a task's champion answers: a calibrated binary LightGBM model (probability,
#: score, grade, reasons), a ranking of products, or an amount with its interval and tier
#: (customer value, ``training.value.scorer``).
Scorer = Literal["binary", "recommender", "value"]


@dataclass(frozen=True)
class Task:
    key: str
    """Short name: the CLI argument, the score table's directory, ``--models``."""
    title: str
    model_name: str
    """The registered model (and MLflow experiment) name."""
    feature_service: str
    entity: EntityName
    population: Population
    label: str
    """What the label means, in one line (the model card and docs say it this way)."""
    window_days: int
    """Default label window: how far after the cutoff the outcome is observed."""
    trainer: str
    """``module:function`` of the training entry point (loaded lazily)."""
    scorer: Scorer
    grades: tuple[list[str], list[float]] | None = None
    """Grade labels, best first, and the share of the validation fold each takes."""
    grade_column: str | None = None
    """Name of the grade in answers and score tables (``band`` for churn, ``grade`` for leads)."""
    needs: tuple[str, ...] = ()
    """Contract tables the task cannot do without."""
    backtest: str = ""
    """``module:`` of a binary task's backtest hooks: ``outcomes(lake, origin, window_days, spec)``,
    the labels of the population at ``origin``, and ``baseline_scores(frame, spec)``, its rule."""

    @property
    def key_column(self) -> str:
        return JOIN_KEYS[self.entity]

    def train_function(self) -> Callable[..., Any]:
        module, _, name = self.trainer.partition(":")
        return getattr(importlib.import_module(module), name)

    def backtest_hooks(self) -> Any:
        """The module holding ``outcomes`` and ``baseline_scores`` (loaded lazily), or None."""
        return importlib.import_module(self.backtest) if self.backtest else None


CHURN = Task(
    key="churn",
    title="churn risk",
    model_name="crm-churn",
    feature_service=CHURN_SERVICE,
    entity="customer",
    population=ActiveCustomers(),
    label="an active subscription ends within the window (subscription mode), or a customer who "
          "ordered in the look-back orders nothing within it (transactional mode)",
    window_days=90,
    trainer="training.churn:train_churn",
    scorer="binary",
    backtest="training.churn",
    # "high" is the top 10% of risk, "medium" the next 20%.
    grades=(["high", "medium", "low"], [0.10, 0.20, 0.70]),
    grade_column="band",
)

LEAD = Task(
    key="lead",
    title="lead scoring",
    model_name="crm-lead-scoring",
    feature_service=LEAD_SERVICE,
    entity="lead",
    population=OpenLeads(),
    label="a lead open at the cutoff converts within the window",
    window_days=60,
    trainer="training.lead:train_lead",
    scorer="binary",
    backtest="training.lead",
    # Like the A/B/C/D tiers of the 80/20 rule: A is the top 10% of leads.
    grades=(["A", "B", "C", "D"], [0.10, 0.20, 0.30, 0.40]),
    grade_column="grade",
    needs=("leads",),
)

NBP = Task(
    key="nbp",
    title="next best products",
    model_name="crm-next-best-product",
    feature_service=NBP_SERVICE,
    entity="customer",
    population=SignedUpCustomers(),
    label="the products a customer buys within the window (owned one-off products excluded)",
    window_days=30,
    trainer="training.nbp.train:train_nbp",
    scorer="recommender",
    needs=("orders",),
)

VALUE = Task(
    key="clv",
    title="customer value",
    model_name="crm-customer-value",
    feature_service=VALUE_SERVICE,
    entity="customer",
    population=SignedUpCustomers(),
    label="spend in the H days after the cutoff (H: the horizon, --horizon)",
    window_days=365,
    trainer="training.value.train:train_value",
    scorer="value",
    # A–D from predicted value and margin (training.value.tiers), not from shares of a score.
    grade_column="tier",
    needs=("orders",),
)

#: Every task, in the order the pipeline trains and scores them.
TASKS: dict[str, Task] = {t.key: t for t in (CHURN, LEAD, NBP, VALUE)}


def get_task(key: str) -> Task:
    """The task called ``key`` (its short name) or, for convenience, its registered model name."""
    for task in TASKS.values():
        if key in (task.key, task.model_name):
            return task
    from crmdata.errors import CrmscoreError

    raise CrmscoreError(f"unknown model {key!r}: expected one of {', '.join(TASKS)}")


def model_names() -> tuple[str, ...]:
    return tuple(t.model_name for t in TASKS.values())
