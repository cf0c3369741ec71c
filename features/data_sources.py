"""Data sources: where the offline feature tables live.

The feature pipeline (`crmscore features build`) writes one parquet table per
entity, keyed by the entity id and ``event_timestamp`` (the snapshot date; every
value in a row uses only events strictly before it). Feast reads these files for
point-in-time training frames and for materialization into the online store.

The paths below point at the default workspace (``$CRMSCORE_HOME``, else
``<project>/data``) so that Feast's own CLI works from this directory.
``crmscore features apply`` re-targets them at the workspace it is given (see
``features/repository.py``), so one process can serve several workspaces.
"""

from feast import FileSource

try:  # imported as part of the `features` package (crmscore, tests)
    from .catalog import EVENT_TIMESTAMP, table_file
    from .paths import default_feature_tables
except ImportError:  # imported as a top-level module by Feast's CLI (`feast apply` in features/)
    from catalog import EVENT_TIMESTAMP, table_file  # type: ignore[no-redef]
    from paths import default_feature_tables  # type: ignore[no-redef]

_TABLES = default_feature_tables()

customer_source = FileSource(
    name="customer_features_source",
    path=str(_TABLES / table_file("customer")),
    timestamp_field=EVENT_TIMESTAMP,
    description="Weekly customer snapshots: RFM, engagement, support, subscription, profile.",
)

lead_source = FileSource(
    name="lead_features_source",
    path=str(_TABLES / table_file("lead")),
    timestamp_field=EVENT_TIMESTAMP,
    description="Weekly lead snapshots: firmographics and funnel activity.",
)

product_source = FileSource(
    name="product_features_source",
    path=str(_TABLES / table_file("product")),
    timestamp_field=EVENT_TIMESTAMP,
    description="Weekly product snapshots: popularity, price, category, repeat rate.",
)
