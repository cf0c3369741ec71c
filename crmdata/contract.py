"""The raw-table data contract of DESIGN.md, as code.

This is the one place that says which raw tables exist, their columns, dtypes,
nullability, allowed values, keys and foreign keys. Everything else (the
generator, the importer, validation, the feature pipeline) reads it from here
instead of retyping column names.

Identifiers are strings (real CRMs mix numeric and prefixed ids); timestamps are
UTC microseconds; money is float64 in the account currency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

import polars as pl

#: The earliest plausible timestamp in a CRM table; anything older is a data error
#: (typically a 1970 epoch default or a two-digit-year parse).
EARLIEST_TIMESTAMP = datetime(1990, 1, 1, tzinfo=UTC)

TIMESTAMP = pl.Datetime("us", "UTC")

Kind = Literal["id", "str", "int", "float", "bool", "timestamp"]

POLARS_DTYPES: dict[str, pl.DataType] = {
    "id": pl.String(),
    "str": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "bool": pl.Boolean(),
    "timestamp": TIMESTAMP,
}


class InteractionType(StrEnum):
    """Customer interactions the feature pipeline knows how to count."""

    LOGIN = "login"
    EMAIL_SENT = "email_sent"
    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    SUPPORT_TICKET = "support_ticket"
    COMPLAINT = "complaint"
    NPS = "nps"
    CSAT = "csat"
    MEETING = "meeting"
    CALL = "call"


class LeadActivityType(StrEnum):
    """Lead engagement events, as a marketing-automation tool records them."""

    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    WEB_VISIT = "web_visit"
    PRICING_PAGE_VISIT = "pricing_page_visit"
    CONTENT_DOWNLOAD = "content_download"
    DEMO_REQUEST = "demo_request"
    WEBINAR = "webinar"
    MEETING = "meeting"
    CALL = "call"


#: Ordered buckets, so features can treat them as ordinal.
COMPANY_SIZES: tuple[str, ...] = ("1-10", "11-50", "51-200", "201-1000", "1001-5000", "5000+")
JOB_SENIORITIES: tuple[str, ...] = ("individual", "manager", "director", "vp", "c_level")

#: Value ranges of survey answers stored in interactions.value.
SURVEY_RANGES: dict[str, tuple[float, float]] = {
    InteractionType.NPS: (0.0, 10.0),
    InteractionType.CSAT: (1.0, 5.0),
}

AttributeKind = Literal["categorical", "numeric"]
#: Tables that may carry declared custom attributes (a CRM's custom fields).
TABLES_WITH_CUSTOM_ATTRIBUTES: tuple[str, ...] = ("customers", "leads")
CUSTOM_ATTRIBUTE_DTYPES: dict[str, pl.DataType] = {
    "categorical": pl.String(),
    "numeric": pl.Float64(),
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False
    #: Closed set of allowed values (only where the system's logic depends on them).
    allowed: tuple[str, ...] | None = None
    #: Lower bound for numbers (amounts, quantities, prices).
    minimum: float | None = None
    #: Regular expression the value must match.
    pattern: str | None = None
    #: Personal data: stored, but never a feature and never logged.
    pii: bool = False
    #: Optional columns may be absent from the file; required ones may not.
    required: bool = True

    @property
    def dtype(self) -> pl.DataType:
        return POLARS_DTYPES[self.kind]


@dataclass(frozen=True)
class ForeignKey:
    column: str
    table: str
    ref_column: str
    #: What a broken reference is called in an error ("unknown customers").
    noun: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    required: bool
    key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    #: Pairs (earlier, later) of timestamp columns where later >= earlier when both set.
    ordered: tuple[tuple[str, str], ...] = field(default=())

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def timestamp_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "timestamp"]

    @property
    def pii_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.pii]

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}


_ISO_COUNTRY = r"^[A-Z]{2}$"

CUSTOMERS = Table(
    name="customers",
    required=True,
    key=("customer_id",),
    columns=(
        Column("customer_id", "id"),
        Column("signup_at", "timestamp"),
        Column("country", "str", pattern=_ISO_COUNTRY),
        Column("segment", "str"),
        Column("industry", "str"),
        Column("acquisition_channel", "str"),
        Column("name", "str", nullable=True, pii=True, required=False),
        Column("email", "str", nullable=True, pii=True, required=False),
        Column("phone", "str", nullable=True, pii=True, required=False),
    ),
)

PRODUCTS = Table(
    name="products",
    required=False,
    key=("product_id",),
    columns=(
        Column("product_id", "id"),
        Column("name", "str"),
        Column("category", "str"),
        Column("price", "float", minimum=0.0),
        Column("is_repeatable", "bool"),
    ),
)

ORDERS = Table(
    name="orders",
    # A subscription business may have no orders: see ACTIVITY_TABLES.
    required=False,
    key=("order_id",),
    columns=(
        Column("order_id", "id"),
        Column("customer_id", "id"),
        Column("product_id", "id", nullable=True),
        Column("ordered_at", "timestamp"),
        Column("quantity", "int", minimum=0),
        Column("amount", "float", minimum=0.0),
    ),
    foreign_keys=(
        ForeignKey("customer_id", "customers", "customer_id", "unknown customers"),
        ForeignKey("product_id", "products", "product_id", "unknown products"),
    ),
)

SUBSCRIPTIONS = Table(
    name="subscriptions",
    required=False,
    key=("subscription_id",),
    columns=(
        Column("subscription_id", "id"),
        Column("customer_id", "id"),
        Column("plan", "str"),
        Column("monthly_price", "float", minimum=0.0),
        Column("started_at", "timestamp"),
        Column("ended_at", "timestamp", nullable=True),
    ),
    foreign_keys=(ForeignKey("customer_id", "customers", "customer_id", "unknown customers"),),
    ordered=(("started_at", "ended_at"),),
)

INTERACTIONS = Table(
    name="interactions",
    required=False,
    columns=(
        Column("customer_id", "id"),
        Column("occurred_at", "timestamp"),
        Column("type", "str", allowed=tuple(InteractionType)),
        Column("value", "float", nullable=True),
    ),
    foreign_keys=(ForeignKey("customer_id", "customers", "customer_id", "unknown customers"),),
)

LEADS = Table(
    name="leads",
    required=False,
    key=("lead_id",),
    columns=(
        Column("lead_id", "id"),
        Column("created_at", "timestamp"),
        Column("source", "str"),
        Column("country", "str", pattern=_ISO_COUNTRY),
        Column("industry", "str"),
        Column("company_size", "str", allowed=COMPANY_SIZES),
        Column("job_seniority", "str", allowed=JOB_SENIORITIES),
        Column("converted_at", "timestamp", nullable=True),
        Column("lost_at", "timestamp", nullable=True),
        Column("customer_id", "id", nullable=True),
    ),
    foreign_keys=(ForeignKey("customer_id", "customers", "customer_id", "unknown customers"),),
    ordered=(("created_at", "converted_at"), ("created_at", "lost_at")),
)

LEAD_ACTIVITIES = Table(
    name="lead_activities",
    required=False,
    columns=(
        Column("lead_id", "id"),
        Column("occurred_at", "timestamp"),
        Column("type", "str", allowed=tuple(LeadActivityType)),
    ),
    foreign_keys=(ForeignKey("lead_id", "leads", "lead_id", "unknown leads"),),
)

#: Labels you bring: one row per entity and date, the outcome your own system recorded
#: for the label window after ``as_of``. When the lake has one, training uses it instead
#: of deriving labels from events (features are still built as of each ``as_of``).
CHURN_LABELS = Table(
    name="churn_labels",
    required=False,
    key=("customer_id", "as_of"),
    columns=(
        Column("customer_id", "id"),
        Column("as_of", "timestamp"),
        Column("churned", "bool"),
    ),
    foreign_keys=(ForeignKey("customer_id", "customers", "customer_id", "unknown customers"),),
)

LEAD_LABELS = Table(
    name="lead_labels",
    required=False,
    key=("lead_id", "as_of"),
    columns=(
        Column("lead_id", "id"),
        Column("as_of", "timestamp"),
        Column("converted", "bool"),
    ),
    foreign_keys=(ForeignKey("lead_id", "leads", "lead_id", "unknown leads"),),
)

#: The tables that record what happened: features are computed from them, and their
#: timestamps span the lake's events (label tables hold outcomes, not events).
EVENT_TABLES: dict[str, Table] = {
    t.name: t
    for t in (CUSTOMERS, PRODUCTS, ORDERS, SUBSCRIPTIONS, INTERACTIONS, LEADS, LEAD_ACTIVITIES)
}
#: Every contract table, in dependency order (referenced tables first).
TABLES: dict[str, Table] = {**EVENT_TABLES, CHURN_LABELS.name: CHURN_LABELS, LEAD_LABELS.name: LEAD_LABELS}
REQUIRED_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if t.required)
#: A lake needs at least one of these: what customers do is either buy (orders) or
#: subscribe (subscriptions). Without both, no feature or label can say anything.
ACTIVITY_TABLES: tuple[str, ...] = (ORDERS.name, SUBSCRIPTIONS.name)


def table(name: str) -> Table:
    """The contract of one table, or a clear error naming the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; the contract has {', '.join(TABLES)}") from None
