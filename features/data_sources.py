"""Data sources: where the offline feature tables live.

The feature pipeline (`crmscore features build`) writes one parquet table per
entity, keyed by the entity id and ``event_timestamp`` (the snapshot date; every
value in a row uses only events strictly before it). Feast reads these files for
point-in-time training frames and for materialization into the online store.

The paths below point at the default workspace (``$CRMSCORE_HOME``, else
``<project>/data``) so that Feast's own CLI works from this directory.
``crmscore features apply`` re-targets copies of them at the workspace it is
given (``features.store.repository_objects``), so one process can serve several
workspaces.
"""

from feast import FileSource, PushSource

try:  # imported as part of the `features` package (crmscore, tests)
    from .catalog import (
        EVENT_TIMESTAMP,
        SCORE_TIMESTAMP,
        SCORE_VIEW_NAMES,
        VALUE_TABLE,
        score_dir_name,
        table_file,
    )
    from .paths import default_feature_tables, default_workspace
except ImportError:  # imported as a top-level module by Feast's CLI (`feast apply` in features/)
    from catalog import (  # type: ignore[no-redef]
        EVENT_TIMESTAMP,
        SCORE_TIMESTAMP,
        SCORE_VIEW_NAMES,
        VALUE_TABLE,
        score_dir_name,
        table_file,
    )
    from paths import default_feature_tables, default_workspace  # type: ignore[no-redef]

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

customer_value_source = FileSource(
    name=f"{VALUE_TABLE}_source",
    path=str(_TABLES / table_file(VALUE_TABLE)),
    timestamp_field=EVENT_TIMESTAMP,
    description="Weekly customer-value snapshots: RFM scores and segment, the BG/NBD + Gamma-Gamma "
    "peer, run-rate and cost-to-serve counts.",
)

product_source = FileSource(
    name="product_features_source",
    path=str(_TABLES / table_file("product")),
    timestamp_field=EVENT_TIMESTAMP,
    description="Weekly product snapshots: popularity, price, category, repeat rate.",
)


# --- batch scores ------------------------------------------------------------------
# `crmscore score` writes one table per task under the workspace's scores directory,
# partitioned by date (``as_of_date=YYYY-MM-DD/part-*.parquet``, one partition per
# scoring date, replaced whole on a rerun). The FileSource reads the whole table,
# so historical retrieval and `materialize` see every scoring date; the push
# source is how `crmscore push-scores` (and the pipeline) writes a run's scores
# straight into the online store without re-reading the table.

_SCORES = default_workspace().scores


def _score_sources(task: str) -> tuple[FileSource, PushSource]:
    batch = FileSource(
        name=f"{SCORE_VIEW_NAMES[task]}_source",
        path=str(_SCORES / score_dir_name(task)),
        timestamp_field=SCORE_TIMESTAMP,
        description=f"Batch {task} scores, one partition per scoring date.",
        tags={"table": "scores", "task": task},
    )
    push = PushSource(
        name=f"{SCORE_VIEW_NAMES[task]}_push",
        batch_source=batch,
        description=f"Where a {task} scoring run pushes its rows into the online store.",
    )
    return batch, push


churn_scores_source, churn_scores_push = _score_sources("churn")
lead_scores_source, lead_scores_push = _score_sources("lead")
nbp_scores_source, nbp_scores_push = _score_sources("nbp")
clv_scores_source, clv_scores_push = _score_sources("clv")
