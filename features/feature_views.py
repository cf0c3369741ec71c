"""Feature views: one wide view per entity over its snapshot table.

The schema is not listed here: Feast infers it from the feature table at apply
time. The feature pipeline writes exactly the columns of ``features/catalog.py``
that the lake can support (plus one ``attr_*`` column per declared custom
attribute), typed from the catalogue, so a lake without some optional tables
registers fewer features instead of columns of nulls.

``ttl`` bounds how old a snapshot may be: historical retrieval ignores older rows
and ``features.online.read_online`` flags older online rows as stale (Feast itself
does not check it on online reads).
"""

from feast import FeatureView, Field
from feast.types import Array, Bool, Float64, Int64, String

try:  # imported as part of the `features` package (crmscore, tests)
    from .catalog import FEATURES, SCORE_FIELDS, SCORE_VIEW_NAMES, VALUE_TABLE, VIEW_NAMES, VIEW_TTL
    from .data_sources import (
        churn_scores_push,
        clv_scores_push,
        customer_source,
        customer_value_source,
        lead_scores_push,
        lead_source,
        nbp_scores_push,
        product_source,
    )
    from .entities import customer, lead, product
except ImportError:  # imported as a top-level module by Feast's CLI (`feast apply` in features/)
    from catalog import (  # type: ignore[no-redef]
        FEATURES,
        SCORE_FIELDS,
        SCORE_VIEW_NAMES,
        VALUE_TABLE,
        VIEW_NAMES,
        VIEW_TTL,
    )
    from data_sources import (  # type: ignore[no-redef]
        churn_scores_push,
        clv_scores_push,
        customer_source,
        customer_value_source,
        lead_scores_push,
        lead_source,
        nbp_scores_push,
        product_source,
    )
    from entities import customer, lead, product  # type: ignore[no-redef]

customer_features = FeatureView(
    name=VIEW_NAMES["customer"],
    entities=[customer],
    ttl=VIEW_TTL,
    source=customer_source,
    online=True,
    description="Customer behaviour as of each snapshot date.",
    tags={"entity": "customer"},
)

# The customer-value view declares its schema from the catalogue: its table always holds
# every column (null where the lake cannot support one), and the churn service projects
# its peer columns, which a projection can only name on a view that lists its features.
_FEAST_KINDS = {"int": Int64, "float": Float64, "str": String}

customer_value = FeatureView(
    name=VIEW_NAMES[VALUE_TABLE],
    entities=[customer],
    ttl=VIEW_TTL,
    schema=[Field(name=s.name, dtype=_FEAST_KINDS[s.kind], description=s.description)
            for s in FEATURES[VALUE_TABLE]],
    source=customer_value_source,
    online=True,
    description="Customer value as of each snapshot date: RFM scores and segment, the "
    "probabilistic peer (BG/NBD + Gamma-Gamma), run-rate and cost-to-serve counts.",
    tags={"entity": "customer"},
)

lead_features = FeatureView(
    name=VIEW_NAMES["lead"],
    entities=[lead],
    ttl=VIEW_TTL,
    source=lead_source,
    online=True,
    description="Lead firmographics and engagement as of each snapshot date.",
    tags={"entity": "lead"},
)

product_features = FeatureView(
    name=VIEW_NAMES["product"],
    entities=[product],
    ttl=VIEW_TTL,
    source=product_source,
    online=True,
    description="Product popularity and catalogue data as of each snapshot date.",
    tags={"entity": "product"},
)


# --- precomputed batch scores ----------------------------------------------------------
# Unlike the feature views above, these declare their schema: a score table may not
# exist yet when the repository is applied (nothing scored so far), so there is
# nothing to infer from. Each is fed by a push source (``crmscore push-scores``
# writes a run straight into the online store) whose batch source is the
# partitioned score table, so historical retrieval and ``materialize`` also work.
# The TTL matches the features': a score older than two weekly runs is stale.

_SCORE_TYPES = {
    "int": Int64, "float": Float64, "str": String, "bool": Bool,
    "str_list": Array(String), "float_list": Array(Float64),
}


def _score_schema(task: str) -> list[Field]:
    return [Field(name=f.name, dtype=_SCORE_TYPES[f.kind], description=f.description)
            for f in SCORE_FIELDS[task]]


churn_scores = FeatureView(
    name=SCORE_VIEW_NAMES["churn"],
    entities=[customer],
    ttl=VIEW_TTL,
    schema=_score_schema("churn"),
    source=churn_scores_push,
    online=True,
    description="The latest batch churn risk per customer: probability, score, band, reasons.",
    tags={"entity": "customer", "kind": "scores"},
)

lead_scores = FeatureView(
    name=SCORE_VIEW_NAMES["lead"],
    entities=[lead],
    ttl=VIEW_TTL,
    schema=_score_schema("lead"),
    source=lead_scores_push,
    online=True,
    description="The latest batch lead score per open lead: probability, score, grade, reasons.",
    tags={"entity": "lead", "kind": "scores"},
)

nbp_scores = FeatureView(
    name=SCORE_VIEW_NAMES["nbp"],
    entities=[customer],
    ttl=VIEW_TTL,
    schema=_score_schema("nbp"),
    source=nbp_scores_push,
    online=True,
    description="The latest batch next-best-product list per customer, with reasons.",
    tags={"entity": "customer", "kind": "scores"},
)

clv_scores = FeatureView(
    name=SCORE_VIEW_NAMES["clv"],
    entities=[customer],
    ttl=VIEW_TTL,
    schema=_score_schema("clv"),
    source=clv_scores_push,
    online=True,
    description="The latest batch customer value per customer: CLV and interval, margin, tier, segment.",
    tags={"entity": "customer", "kind": "scores"},
)
