"""The feature catalogue: names, types, windows and the tables each feature needs.

This is the one place where feature names and window lengths are defined. The
feature SQL (``features/sql.py``) computes exactly these columns, the docs
describe them, and the Feast definitions type them from here. Nothing in this
module touches Feast or data, so Feast's CLI can import it for free.

Window semantics (documented in docs/features.md): a feature for snapshot
``as_of`` only sees events with ``timestamp < as_of``; an ``N``-day window
counts events with ``as_of - N days <= timestamp < as_of``.

Not every column of a feature table is a model input. A spec with
``model_input=False`` rides in its entity's view (so one online read gives serving
the features *and* what it needs to decide whether the entity can be scored) but
must not be trained on: ``lead_status`` and ``lead_closed_at`` say whether a lead
is still open at the snapshot, which serving turns into a ``not_eligible`` answer.
``NOT_MODEL_INPUTS`` names them all: a trainer drops those columns from its
service's feature list (``features.training.service_features``); every other
column of the service, custom attributes included, is a model input.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from crmdata.contract import (
    COMPANY_SIZES,
    CUSTOMERS,
    INTERACTIONS,
    JOB_SENIORITIES,
    LEAD_ACTIVITIES,
    LEADS,
    ORDERS,
    PRODUCTS,
    SUBSCRIPTIONS,
    LeadActivityType,
)

FeatureKind = Literal["int", "float", "str"]

#: Lead features that rank an ordered attribute: feature -> (attribute, its values in order).
#: The rank is the value's position (0-based); unknown or missing -> null. The feature SQL
#: and a brand-new lead's request features (``features/new_lead.py``) both derive them here.
LEAD_RANKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "company_size_rank": ("company_size", tuple(COMPANY_SIZES)),
    "job_seniority_rank": ("job_seniority", tuple(JOB_SENIORITIES)),
}
EntityName = Literal["customer", "lead", "product"]

#: Entity name -> join key (the contract's id column of that table).
JOIN_KEYS: dict[str, str] = {
    "customer": CUSTOMERS.key[0],
    "lead": LEADS.key[0],
    "product": PRODUCTS.key[0],
}
#: The timestamp column of every feature table: the snapshot date (``as_of``).
EVENT_TIMESTAMP = "event_timestamp"
#: Prefix of the columns holding a table's declared custom attributes.
ATTRIBUTE_PREFIX = "attr_"

# --- windows (days) ------------------------------------------------------------------
RFM_WINDOWS: tuple[int, ...] = (30, 90, 365)
#: Trend: the last TREND_RECENT days against the TREND_PREVIOUS days before them.
TREND_RECENT = 30
TREND_PREVIOUS = 90
SUPPORT_WINDOWS: tuple[int, ...] = (30, 90)
LOGIN_WINDOWS: tuple[int, ...] = (30, 90)
EMAIL_WINDOW = 90
LEAD_ACTIVITY_WINDOWS: tuple[int, ...] = (7, 30)
PRODUCT_WINDOWS: tuple[int, ...] = (30, 90)

#: Customer value (issue 13): the probabilistic peer's prediction horizon, and the window of
#: the value view's run-rate and cost-to-serve counts.
PEER_HORIZON_DAYS = 365
VALUE_WINDOW = 365
#: RFM scores are quantile scores 1..RFM_LEVELS within each snapshot (5: quintiles).
RFM_LEVELS = 5

#: Feature-view TTL: two weekly snapshot periods. Historical retrieval ignores rows
#: older than this before a cutoff; online reads flag them as stale.
VIEW_TTL = timedelta(days=14)


class LeadStatus(StrEnum):
    """Values of ``lead_status``: where a lead stands at the snapshot."""

    OPEN = "open"
    CONVERTED = "converted"
    LOST = "lost"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    entity: EntityName
    kind: FeatureKind
    description: str
    #: Raw tables (besides the entity's own) the feature is computed from.
    requires: tuple[str, ...] = ()
    #: False for a column served with the features but never trained on (``NOT_MODEL_INPUTS``).
    model_input: bool = True


def _customer_features() -> list[FeatureSpec]:
    o, p, i, s = ORDERS.name, PRODUCTS.name, INTERACTIONS.name, SUBSCRIPTIONS.name
    specs = [
        FeatureSpec("tenure_days", "customer", "float", "days from signup_at to as_of"),
        FeatureSpec("segment", "customer", "str", "customer segment"),
        FeatureSpec("acquisition_channel", "customer", "str", "acquisition channel"),
        FeatureSpec("country", "customer", "str", "ISO country code"),
        FeatureSpec("industry", "customer", "str", "industry"),
        FeatureSpec("orders_total", "customer", "int", "orders before as_of", (o,)),
        FeatureSpec("revenue_total", "customer", "float", "order amount before as_of", (o,)),
    ]
    for w in RFM_WINDOWS:
        specs += [
            FeatureSpec(f"orders_{w}d", "customer", "int", f"orders in the last {w} days", (o,)),
            FeatureSpec(
                f"revenue_{w}d", "customer", "float", f"order amount in the last {w} days", (o,)
            ),
        ]
    specs += [
        FeatureSpec(
            "orders_trend",
            "customer",
            "float",
            f"orders in the last {TREND_RECENT} days minus the {TREND_RECENT}-day average "
            f"of the {TREND_PREVIOUS} days before them (negative = slowing down)",
            (o,),
        ),
        FeatureSpec(
            "revenue_trend",
            "customer",
            "float",
            f"amount in the last {TREND_RECENT} days minus the {TREND_RECENT}-day average "
            f"of the {TREND_PREVIOUS} days before them",
            (o,),
        ),
        FeatureSpec("avg_order_value", "customer", "float", "revenue_total / orders_total", (o,)),
        FeatureSpec(
            "days_since_last_order", "customer", "float", "days since the last order", (o,)
        ),
        FeatureSpec(
            "distinct_products", "customer", "int", "distinct products ever ordered", (o,)
        ),
        FeatureSpec(
            "distinct_categories", "customer", "int", "distinct categories ever ordered", (o, p)
        ),
        FeatureSpec(
            "days_since_last_login", "customer", "float", "days since the last login", (i,)
        ),
    ]
    for w in LOGIN_WINDOWS:
        specs.append(FeatureSpec(f"logins_{w}d", "customer", "int", f"logins in {w} days", (i,)))
    specs.append(
        FeatureSpec(
            "days_since_last_ticket", "customer", "float", "days since the last support ticket", (i,)
        )
    )
    for w in SUPPORT_WINDOWS:
        specs += [
            FeatureSpec(f"tickets_{w}d", "customer", "int", f"support tickets in {w} days", (i,)),
            FeatureSpec(f"complaints_{w}d", "customer", "int", f"complaints in {w} days", (i,)),
        ]
    specs += [
        FeatureSpec("last_nps", "customer", "float", "value of the latest NPS answer", (i,)),
        FeatureSpec("last_csat", "customer", "float", "value of the latest CSAT answer", (i,)),
        FeatureSpec(
            f"email_open_rate_{EMAIL_WINDOW}d",
            "customer",
            "float",
            f"email opens / emails sent in {EMAIL_WINDOW} days (null without sends)",
            (i,),
        ),
        FeatureSpec(
            f"email_click_rate_{EMAIL_WINDOW}d",
            "customer",
            "float",
            f"email clicks / emails sent in {EMAIL_WINDOW} days (null without sends)",
            (i,),
        ),
        FeatureSpec(
            "subscription_active", "customer", "int", "1 if a subscription is active at as_of", (s,)
        ),
        FeatureSpec("subscription_plan", "customer", "str", "plan of the active subscription", (s,)),
        FeatureSpec(
            "subscription_monthly_price",
            "customer",
            "float",
            "monthly price of the active subscription",
            (s,),
        ),
        FeatureSpec(
            "subscription_age_days",
            "customer",
            "float",
            "days since the active subscription started",
            (s,),
        ),
        FeatureSpec(
            "subscriptions_ended", "customer", "int", "subscriptions ended before as_of", (s,)
        ),
    ]
    return specs


def _lead_features() -> list[FeatureSpec]:
    a = LEAD_ACTIVITIES.name
    specs = [
        FeatureSpec("source", "lead", "str", "lead source"),
        FeatureSpec("country", "lead", "str", "ISO country code"),
        FeatureSpec("industry", "lead", "str", "industry"),
        FeatureSpec("company_size", "lead", "str", "company size bucket"),
        FeatureSpec("company_size_rank", "lead", "int", "company size bucket as 0..5"),
        FeatureSpec("job_seniority", "lead", "str", "contact's seniority"),
        FeatureSpec("job_seniority_rank", "lead", "int", "seniority as 0..4"),
        FeatureSpec("days_since_created", "lead", "float", "days from created_at to as_of"),
        # Eligibility, not inputs: whether the lead can be scored at as_of (serving).
        FeatureSpec(
            "lead_status",
            "lead",
            "str",
            f"{LeadStatus.OPEN}, {LeadStatus.CONVERTED} or {LeadStatus.LOST} at as_of "
            "(converted_at or lost_at before as_of closes the lead); not a model input",
            model_input=False,
        ),
        FeatureSpec(
            "lead_closed_at",
            "lead",
            "str",
            "UTC date (YYYY-MM-DD) the lead was converted or lost, null while open; "
            "not a model input",
            model_input=False,
        ),
    ]
    for w in LEAD_ACTIVITY_WINDOWS:
        specs.append(FeatureSpec(f"activities_{w}d", "lead", "int", f"activities in {w} days", (a,)))
        for t in LeadActivityType:
            specs.append(
                FeatureSpec(f"{t.value}_{w}d", "lead", "int", f"{t.value} events in {w} days", (a,))
            )
    specs += [
        FeatureSpec(
            "days_since_last_activity", "lead", "float", "days since the last activity", (a,)
        ),
        FeatureSpec("demo_requested", "lead", "int", "1 if a demo was ever requested", (a,)),
        FeatureSpec(
            "pricing_page_visits", "lead", "int", "pricing-page visits since creation", (a,)
        ),
        FeatureSpec(
            "engagement_velocity",
            "lead",
            "float",
            f"activities per day in the last {LEAD_ACTIVITY_WINDOWS[0]} days minus per day "
            f"in the last {LEAD_ACTIVITY_WINDOWS[-1]} days (positive = heating up)",
            (a,),
        ),
    ]
    return specs


def _product_features() -> list[FeatureSpec]:
    o, p = ORDERS.name, PRODUCTS.name
    # Prefixed: next_best_product_v1 joins them next to the customer's own order counts.
    specs = [
        FeatureSpec("product_price", "product", "float", "list price", (p,)),
        FeatureSpec("product_category", "product", "str", "category", (p,)),
        FeatureSpec("product_is_repeatable", "product", "int", "1 if bought repeatedly", (p,)),
    ]
    for w in PRODUCT_WINDOWS:
        specs += [
            FeatureSpec(f"product_orders_{w}d", "product", "int", f"orders in {w} days", (o,)),
            FeatureSpec(
                f"product_buyers_{w}d", "product", "int", f"distinct buyers in {w} days", (o,)
            ),
        ]
    specs.append(
        FeatureSpec(
            "product_repeat_rate",
            "product",
            "float",
            "share of its buyers (before as_of) who bought it more than once",
            (o,),
        )
    )
    return specs


def _value_features() -> list[FeatureSpec]:
    """The customer-value view (issue 13): RFM, the probabilistic peer and the run-rate.

    Unlike the wide entity views its schema is fixed (no custom attributes) and every
    column is always present, null where the lake cannot support it (the churn service
    projects the peer columns, so they must exist on every lake)."""
    o, i = ORDERS.name, INTERACTIONS.name
    h, w = PEER_HORIZON_DAYS, VALUE_WINDOW
    return [
        FeatureSpec("rfm_recency_days", "customer", "float", "days since the last order (null: none)", (o,)),
        FeatureSpec("rfm_frequency", "customer", "int", "orders before as_of, lifetime", (o,)),
        FeatureSpec("rfm_monetary", "customer", "float", "mean order amount, lifetime (null: none)", (o,)),
        FeatureSpec("rfm_r", "customer", "int", f"recency score 1..{RFM_LEVELS} within the snapshot "
                    f"({RFM_LEVELS}: most recent; null without orders)", (o,)),
        FeatureSpec("rfm_f", "customer", "int", f"frequency score 1..{RFM_LEVELS} within the snapshot "
                    f"({RFM_LEVELS}: most orders)", (o,)),
        FeatureSpec("rfm_m", "customer", "int", f"monetary score 1..{RFM_LEVELS} within the snapshot "
                    f"({RFM_LEVELS}: highest mean order amount)", (o,)),
        FeatureSpec("rfm_segment", "customer", "str", "named RFM segment (features/rfm.py SEGMENTS; "
                    "null without orders)", (o,)),
        FeatureSpec("peer_p_alive", "customer", "float", "BG/NBD probability the customer is still "
                    "active (null: no order, or the snapshot could not be fitted)", (o,)),
        FeatureSpec("peer_expected_orders", "customer", "float", f"BG/NBD expected purchase days in the "
                    f"next {h} days", (o,)),
        FeatureSpec("peer_expected_spend", "customer", "float", f"expected orders x Gamma-Gamma expected "
                    f"order value over the next {h} days", (o,)),
        FeatureSpec(f"value_tickets_{w}", "customer", "int", f"support tickets in the last {w} days", (i,)),
        FeatureSpec(f"value_complaints_{w}", "customer", "int", f"complaints in the last {w} days", (i,)),
        FeatureSpec(f"value_spend_{w}", "customer", "float", f"order amount in the last {w} days "
                    "(the run-rate)", (o,)),
    ]


#: The customer-value feature table (and its view's name): see ``_value_features``.
VALUE_TABLE = "customer_value"

#: Feature table -> its specs. A table is one Feast view; the entity tables hold every
#: feature the lake supports (and custom attributes), the value table a fixed schema.
FEATURES: dict[str, list[FeatureSpec]] = {
    "customer": _customer_features(),
    "lead": _lead_features(),
    "product": _product_features(),
    VALUE_TABLE: _value_features(),
}
#: Feature table -> the entity its rows describe.
TABLE_ENTITIES: dict[str, EntityName] = {
    "customer": "customer",
    "lead": "lead",
    "product": "product",
    VALUE_TABLE: "customer",
}
#: Tables with a fixed schema: every catalogue column always written (null where the lake
#: lacks what it needs), and the view declares its schema instead of inferring it.
FIXED_SCHEMA_TABLES: frozenset[str] = frozenset({VALUE_TABLE})
#: The peer's columns: the churn service takes them too (transactional churn).
PEER_FEATURES: tuple[str, ...] = ("peer_p_alive", "peer_expected_orders", "peer_expected_spend")

#: Feature service names: each model version asks for its features by one of these
#: (``features/feature_services.py`` defines the services; ``training/tasks.py`` says which
#: model uses which). Plain strings here, so naming one costs no Feast import.
CHURN_SERVICE = "churn_v1"
LEAD_SERVICE = "lead_scoring_v1"
NBP_SERVICE = "next_best_product_v1"
#: Customer value (clv): the customer activity views plus the value view.
VALUE_SERVICE = "customer_value"

#: Columns of the feature views that are served but are not model inputs (the specs with
#: ``model_input=False``): a trainer removes them from its service's feature list.
NOT_MODEL_INPUTS: frozenset[str] = frozenset(
    s.name for specs in FEATURES.values() for s in specs if not s.model_input
)

#: Feature view name per feature table: one wide view per entity (one online lookup for
#: its service), and the customer-value view.
VIEW_NAMES: dict[str, str] = {t: t if t == VALUE_TABLE else f"{t}_features" for t in FEATURES}


def table_file(table: str) -> str:
    """File name of a feature table (an entity's, or ``VALUE_TABLE``) in the feature-table directory."""
    return f"{table}.parquet"


def attribute_column(name: str) -> str:
    return f"{ATTRIBUTE_PREFIX}{name}"


# --- batch scores (written by `crmscore score`, read back through Feast) -------------


@dataclass(frozen=True)
class ScoreField:
    name: str
    kind: Literal["int", "float", "str", "bool", "str_list", "float_list"]
    description: str


#: The entity each batch-score table is keyed by.
SCORE_ENTITIES: dict[str, EntityName] = {
    "churn": "customer", "lead": "lead", "nbp": "customer", "clv": "customer",
}
#: Timestamp column of every score table: the date the population was scored as of.
SCORE_TIMESTAMP = "as_of"
#: Feature view (and push source ``<view>_push``) serving each task's latest scores.
SCORE_VIEW_NAMES: dict[str, str] = {t: f"{t}_scores" for t in SCORE_ENTITIES}
_MODEL_VERSION = ScoreField("model_version", "str", "registered model version that scored the row")
_REASONS = ScoreField(
    "reasons", "str",
    'JSON {"up": [...], "down": [...]} of {feature, value, impact}: the top features pushing '
    "the score up and down (exact TreeSHAP, log-odds); null when scored with --no-reasons",
)
#: The columns of each score table that the score view serves (besides key and as_of).
SCORE_FIELDS: dict[str, list[ScoreField]] = {
    "churn": [
        ScoreField("probability", "float", "calibrated probability of churning within the label window"),
        ScoreField("score", "int", "the probability as a 1-99 score"),
        ScoreField("band", "str", "risk band: high (top 10%), medium (next 20%), low"),
        _REASONS,
        _MODEL_VERSION,
    ],
    "lead": [
        ScoreField("probability", "float", "calibrated probability of converting within the label window"),
        ScoreField("score", "int", "the probability as a 1-99 score"),
        ScoreField("grade", "str", "lead grade: A (top 10%), B (next 20%), C (30%), D (40%)"),
        _REASONS,
        _MODEL_VERSION,
    ],
    "nbp": [
        ScoreField("product_ids", "str_list", "recommended products, best first"),
        ScoreField("product_scores", "float_list", "the recommender's score of each product"),
        ScoreField("product_reasons", "str_list", "why each product (a past purchase or popularity)"),
        ScoreField("cold_start", "bool", "the answer is the popularity fallback"),
        _MODEL_VERSION,
    ],
    "clv": [
        ScoreField("clv", "float", "predicted spend over the model's horizon"),
        ScoreField("clv_low", "float", "lower end of the predicted spend's interval"),
        ScoreField("clv_high", "float", "upper end of the predicted spend's interval"),
        ScoreField("expected_margin", "float", "predicted gross margin minus predicted cost to serve"),
        ScoreField("tier", "str", "customer tier A-D (A: top value share, B: growth, C: the rest, "
                   "D: negative expected margin)"),
        ScoreField("rfm_segment", "str", "the customer's RFM segment at scoring time"),
        _MODEL_VERSION,
    ],
}


#: The column holding the grade (leads) or band (churn).
SCORE_GRADE_COLUMN: dict[str, str] = {"churn": "band", "lead": "grade", "clv": "tier"}


def score_dir_name(task: str) -> str:
    """Directory of a task's score table inside the workspace's scores directory."""
    return task
