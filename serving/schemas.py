"""Request and response schemas of the prediction service (the API contract).

Every request model forbids unknown fields, is strict (``"10"`` is not an
integer, ``0`` is not a boolean) and hides input values from its validation
errors. Lists are bounded (1–1,000 ids), numbers must be finite, and ids are
short printable strings, so malformed input is a 400 with a message before any
model or store is touched. The guard (``serving.auth``) validates request
bodies against these models itself and answers with ``ErrorResponse``, the one
error body of every 4xx and 503, so no client input reaches a log or an error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from crmdata.contract import COMPANY_SIZES, JOB_SENIORITIES

#: The most ids (or leads) one call may carry: bigger jobs belong to batch scoring.
MAX_BATCH = 1000
#: Recommendations per customer.
MAX_K = 50

EntityId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Status = Literal["ok", "not_found", "stale_features", "not_eligible", "incomplete_features"]
CompanySize = Literal[COMPANY_SIZES]  # type: ignore[valid-type]
JobSeniority = Literal[JOB_SENIORITIES]  # type: ignore[valid-type]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False, strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors ----------------------------------------------------------------------------


class ErrorItem(_Response):
    """One validation problem: where (field names and list positions only, never a key
    the client made up: those read ``*``), its kind and a message without the input."""

    loc: list[str | int]
    type: str
    msg: str


class ErrorResponse(_Response):
    """The body of every 400, 401, 403, 404, 405, 413, 415 and 503."""

    error: str = Field(description="what went wrong, in one sentence")
    detail: list[ErrorItem] | None = Field(None, description="400 on invalid input: each problem")

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "1 validation error in the request body",
         "detail": [{"loc": ["next_best_products", "k"], "type": "less_than_equal",
                     "msg": "Input should be less than or equal to 50"}]}]})


# --- what every answer carries -------------------------------------------------------


class ModelInfo(_Response):
    """The registered model version that answered (the champion when it was read)."""

    name: str
    version: str
    alias: str | None


class Reason(_Response):
    """One feature's push on this score, in log-odds (LightGBM ``pred_contrib``)."""

    feature: str
    value: str | int | float | bool | None
    impact: float


class Reasons(_Response):
    up: list[Reason]
    down: list[Reason]


class _Scored(_Response):
    status: Status = Field(
        description="ok | not_found (no online features: nothing scored) | "
        "stale_features (scored, but the features are older than their TTL) | "
        "not_eligible (outside the model's population, e.g. no active subscription or a closed "
        "lead: nothing scored, `detail` says why) | incomplete_features (the stored row lacks "
        "features, `detail` names them: nothing scored)"
    )
    detail: str | None = Field(
        None, description="not_eligible: why the entity is outside the population, e.g. "
        "'no active subscription' or 'lead closed: lost on 2022-09-07'; incomplete_features: "
        "the missing features; a new lead: custom attributes of the wrong type (defaulted)"
    )
    probability: float | None = Field(None, description="calibrated probability")
    score: int | None = Field(None, ge=1, le=99)
    reasons: Reasons | None = Field(None, description="null when explain is false or not scored")
    feature_age_seconds: float | None = Field(
        None, description="age of the oldest feature row used; null when there was none"
    )
    stale: bool = Field(description="a feature row is older than its view's TTL, or missing")
    cold_start: bool = Field(description="the answer is a fallback (no history for this entity)")


# --- churn risk -------------------------------------------------------------------


class ChurnRiskRequest(_Request):
    customer_ids: list[EntityId] = Field(min_length=1, max_length=MAX_BATCH)
    explain: bool = Field(True, description="false skips the reasons (faster)")


class _CustomerRef(_Response):
    customer_id: str


class _LeadRef(_Response):
    lead_id: str | None = Field(description="null for a new lead given by attributes")


# (Bases in this order put the id first in the JSON: pydantic lists base fields in reverse MRO.)
class ChurnRisk(_Scored, _CustomerRef):
    band: Literal["low", "medium", "high"] | None = None


class ChurnRiskResponse(_Response):
    model: ModelInfo
    results: list[ChurnRisk] = Field(description="one per requested id, in request order")


# --- customer value -------------------------------------------------------------------


class CustomerValueRequest(_Request):
    customer_ids: list[EntityId] = Field(min_length=1, max_length=MAX_BATCH)
    explain: bool = Field(True, description="false skips the reasons (faster)")


class Rfm(_Response):
    """The customer's RFM scores (1–5 quintiles within the snapshot, 5 best) and named segment;
    null for a customer with no order."""

    r: int | None = Field(None, ge=1, le=5, description="recency score")
    f: int | None = Field(None, ge=1, le=5, description="frequency score")
    m: int | None = Field(None, ge=1, le=5, description="monetary score")
    segment: str | None = Field(None, description="e.g. Champions, Loyal, At risk, Hibernating, Lost")


class CustomerValue(_CustomerRef):
    status: Status = Field(description=_Scored.model_fields["status"].description)
    detail: str | None = Field(None, description=_Scored.model_fields["detail"].description)
    clv: float | None = Field(None, description="predicted spend over the model's horizon (`horizon_days`)")
    clv_low: float | None = Field(None, description="low end of the per-customer interval (`interval_level`)")
    clv_high: float | None = Field(None, description="high end of the per-customer interval")
    expected_margin: float | None = Field(
        None, description="gross margin on clv minus the predicted cost to serve (tickets, complaints)")
    p_alive: float | None = Field(None, description="P(alive) of the BG/NBD peer model")
    expected_orders: float | None = Field(None, description="the peer's expected orders over its horizon")
    rfm: Rfm | None = None
    tier: Literal["A", "B", "C", "D"] | None = Field(
        None, description="A: top value (the customers making the top share of value); B: growth potential; "
        "C: the rest; D: negative expected margin")
    reasons: Reasons | None = Field(
        None, description="the features pushing clv up and down; impact is the exact contribution to "
        "log(clv) (exp(impact) is the factor); null when explain is false or not scored")
    feature_age_seconds: float | None = Field(
        None, description="age of the oldest feature row used; null when there was none")
    stale: bool = Field(description="a feature row is older than its view's TTL, or missing")
    cold_start: bool = Field(description="the answer is a fallback (no history for this entity)")


class CustomerValueResponse(_Response):
    model: ModelInfo
    horizon_days: int = Field(description="clv and its interval are spend over this many days after the features' date")
    interval_level: float = Field(description="nominal coverage of [clv_low, clv_high]")
    results: list[CustomerValue] = Field(description="one per requested id, in request order")


# --- lead scoring -------------------------------------------------------------------


class NewLead(_Request):
    """A lead that is not in the online store yet: its CRM attributes at creation.

    Anything not given (and every engagement count, which a brand-new lead does
    not have) is defaulted; the answer lists the defaulted features.
    """

    source: Label | None = None
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None
    industry: Label | None = None
    company_size: CompanySize | None = None
    job_seniority: JobSeniority | None = None
    # Not strict: JSON has no datetime type, an ISO 8601 string with its offset is the value.
    created_at: AwareDatetime | None = Field(None, strict=False, description="default: now")
    custom: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")], float | Label] = Field(
        default_factory=dict,
        max_length=64,
        description="the lake's declared custom lead attributes, by name (without attr_); a value "
        "of the wrong kind (text for a number or the reverse) is defaulted and named in `detail`",
        json_schema_extra={"additionalProperties": False},
    )


def _lead_one_of(schema: dict[str, Any]) -> None:
    # The rule the validator below enforces, in the published schema: exactly one of the
    # two keys, and neither may be null.
    for prop in schema["properties"].values():
        alternatives = [a for a in prop.pop("anyOf", []) if a.get("type") != "null"]
        if alternatives:
            prop.update(alternatives[0])
        prop.pop("default", None)
    schema["oneOf"] = [{"required": ["lead_id"]}, {"required": ["attributes"]}]
    schema["example"] = {"lead_id": "L0000042"}  # (OpenAPI 3.0: one example; BentoML knows no "examples")


class LeadInput(_Request):
    """Either ``lead_id`` (features from the online store) or ``attributes`` (a new lead)."""

    model_config = ConfigDict(json_schema_extra=_lead_one_of)

    lead_id: EntityId | None = None
    attributes: NewLead | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data: Any) -> Any:
        if isinstance(data, dict) and sum(k in data for k in ("lead_id", "attributes")) != 1:
            raise ValueError("give either lead_id or attributes, not both or neither")
        return data


class LeadScoreRequest(_Request):
    leads: list[LeadInput] = Field(min_length=1, max_length=MAX_BATCH)
    explain: bool = Field(True, description="false skips the reasons (faster)")


class LeadScore(_Scored, _LeadRef):
    grade: Literal["A", "B", "C", "D"] | None = None
    defaulted: list[str] | None = Field(
        None, description="new leads: the features the service filled in (not given)"
    )


class LeadScoreResponse(_Response):
    model: ModelInfo
    results: list[LeadScore] = Field(description="one per requested lead, in request order")


# --- next best products ---------------------------------------------------------------


class NextBestProductsRequest(_Request):
    customer_ids: list[EntityId] = Field(min_length=1, max_length=MAX_BATCH)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[EntityId] = Field(
        default_factory=list, max_length=MAX_BATCH, description="product ids never to recommend"
    )


class ProductRecommendation(_Response):
    product_id: str
    score: float
    reason: str
    reason_product_id: str | None = None


class CustomerProducts(_Response):
    customer_id: str
    status: Status
    detail: str | None = Field(None, description="incomplete_features: the missing features")
    items: list[ProductRecommendation]
    feature_age_seconds: float | None = None
    stale: bool
    cold_start: bool = Field(description="popularity fallback: the model does not know this customer")


class NextBestProductsResponse(_Response):
    model: ModelInfo
    results: list[CustomerProducts]


# --- admin ---------------------------------------------------------------------------


class LoadedModel(_Response):
    name: str
    version: str | None
    alias: str | None
    loaded_at: datetime | None
    error: str | None = None


class ReloadResponse(_Response):
    changed: list[str] = Field(description="models whose champion was swapped in by this call")
    models: list[LoadedModel]



class NoInput(_Request):
    """The admin calls take no input: an empty body or ``{}``."""


#: Every POST route of the service and the model its body must satisfy (the guard
#: validates it before BentoML sees it).
API_ROUTES: dict[str, type[_Request]] = {
    "/churn_risk": ChurnRiskRequest,
    "/lead_score": LeadScoreRequest,
    "/next_best_products": NextBestProductsRequest,
    "/customer_value": CustomerValueRequest,
    "/admin/reload": NoInput,
    "/admin/models": NoInput,
}
