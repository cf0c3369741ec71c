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

from feast import FeatureView

try:  # imported as part of the `features` package (crmscore, tests)
    from .catalog import VIEW_NAMES, VIEW_TTL
    from .data_sources import customer_source, lead_source, product_source
    from .entities import customer, lead, product
except ImportError:  # imported as a top-level module by Feast's CLI (`feast apply` in features/)
    from catalog import VIEW_NAMES, VIEW_TTL  # type: ignore[no-redef]
    from data_sources import customer_source, lead_source, product_source  # type: ignore[no-redef]
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
