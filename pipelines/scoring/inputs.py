"""What a scoring run reads: the population at ``as_of`` and its features as of then.

Features come from the offline store, but not through ``get_historical_features``:
for a whole population at one date, reading the feature service's parquet tables
directly is what Feast's file store does, minus the dask machinery. The rule is
Feast's point-in-time rule (``tests/test_score.py`` holds the two equal on a
sample): per entity, the newest row with ``as_of - ttl <= event_timestamp <= as_of``.
Which tables, columns and TTLs come from the registered feature service and its
views, so no feature name is retyped here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from features.build import read_build_summary
from pipelines.scoring.types import FEATURE_TIMESTAMP
from training.tasks import get_task

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewRead:
    """Where one feature view of a service lives offline and how to read it as of a date."""

    view: str
    path: str
    key: str
    timestamp_field: str
    ttl: timedelta | None
    features: tuple[str, ...]
    #: Feast's Spark offline store: a SparkSource names a table or a query (or a path
    #: in ``file_format``); only the Spark engine can read those.
    table: str | None = None
    query: str | None = None
    file_format: str = "parquet"

    @property
    def spark_only(self) -> bool:
        return bool(self.table or self.query) or self.file_format != "parquet"


@dataclass(frozen=True)
class ServiceRead:
    service: str
    key: str
    views: tuple[ViewRead, ...]

    @property
    def features(self) -> list[str]:
        return [f for v in self.views for f in v.features]

    def describe(self) -> dict[str, str]:
        return {f"view {v.view}": v.table or v.query or v.path for v in self.views}


def resolve_service(store: FeatureStore, service_name: str) -> ServiceRead:
    """The service's views, their offline files, keys, TTLs and features, from the registry."""
    # Feast takes seconds to import: it is needed only once a caller holds a store (and
    # has imported it), not by every importer of this module (parse_as_of, the unit tests).
    from feast import FileSource
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(service_name)
    except FeatureServiceNotFoundException:
        raise CrmscoreError(
            f"feature service {service_name!r} is not registered; run `crmscore features apply`"
        ) from None
    views = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        source = view.batch_source
        extra: dict[str, str | None] = {}
        if type(source).__name__ == "SparkSource":  # duck-typed: importing it needs pyspark
            extra = {"table": source.table or None, "query": source.query or None,
                     "file_format": (source.file_format or "parquet")}
        elif not isinstance(source, FileSource):
            raise CrmscoreError(
                f"{service_name}: view {view.name} reads a {type(source).__name__}; batch scoring reads "
                "file sources, or Spark sources with --engine spark"
            )
        keys = [c.name for c in view.entity_columns]
        if len(keys) != 1:
            raise CrmscoreError(f"{service_name}: view {view.name} has join keys {keys}; expected one")
        views.append(ViewRead(view=view.name, path=getattr(source, "path", None) or "", key=keys[0],
                              timestamp_field=source.timestamp_field,
                              ttl=view.ttl if view.ttl and view.ttl.total_seconds() else None,
                              features=tuple(f.name for f in projection.features), **extra))  # type: ignore[arg-type]
    keys = {v.key for v in views}
    if len(keys) != 1:
        raise CrmscoreError(f"{service_name} joins several entities ({', '.join(sorted(keys))}); "
                            "batch scoring scores one entity per row")
    return ServiceRead(service=service_name, key=keys.pop(), views=tuple(views))


def read_features_as_of(plan: ServiceRead, population: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """One row per population entity, in population order: the key, ``feature_timestamp``
    (the oldest view row used; null when a view had none within its TTL) and the
    service's features (null where no row)."""
    as_of = as_utc(as_of)
    key = plan.key
    spark_only = [v.view for v in plan.views if v.spark_only]
    if spark_only:
        raise CrmscoreError(f"{plan.service}: views {', '.join(spark_only)} read Spark tables or queries; "
                            "score them with --engine spark")
    ids = population.select(pl.col(key).cast(pl.String))
    frames = [_view_as_of(view, ids, as_of, f"_ts{i}") for i, view in enumerate(plan.views)]
    frame = frames[0]
    for other in frames[1:]:  # each is aligned with the population: no join needed
        frame = frame.hstack(other.drop(key))
    stamps = [f"_ts{i}" for i in range(len(frames))]
    oldest = pl.min_horizontal(*stamps) if len(stamps) > 1 else pl.col(stamps[0])
    missing = pl.any_horizontal(*(pl.col(s).is_null() for s in stamps))
    return frame.with_columns(
        pl.when(missing).then(None).otherwise(oldest).alias(FEATURE_TIMESTAMP)
    ).select(key, FEATURE_TIMESTAMP, *plan.features)


def _view_as_of(view: ViewRead, ids: pl.DataFrame, as_of: datetime, stamp: str) -> pl.DataFrame:
    """Feast's point-in-time rule for one view, aligned with ``ids``.

    Snapshot tables hold few distinct times, so instead of ranking every row per
    entity (a hash over all rows of the window), the snapshots are visited newest
    first: the population is joined to the newest one, and only the entities it
    lacks are looked up in the next older one, and so on. Usually everybody is in
    the newest snapshot and the whole read is one join.
    """
    key = ids.columns[0]
    ts = pl.col(view.timestamp_field)
    scan = pl.scan_parquet(view.path)
    if scan.collect_schema()[view.timestamp_field].time_zone is None:  # naive means UTC to Feast
        ts = ts.dt.replace_time_zone("UTC")
    rows = scan.select(pl.col(view.key).cast(pl.String).alias(key), ts.alias(stamp), *view.features)
    window = pl.col(stamp) <= as_of
    if view.ttl is not None:
        window &= pl.col(stamp) >= as_of - view.ttl
    times = (rows.filter(window).select(pl.col(stamp).unique()).collect()
             .get_column(stamp).sort(descending=True).to_list())
    if not times:
        return ids.join(rows.head(0).collect(), on=key, how="left")
    frame = ids.lazy().join(rows.filter(pl.col(stamp) == times[0]), on=key, how="left",
                            maintain_order="left").collect()
    if frame.height != ids.height:
        raise CrmscoreError(f"view {view.view}: {frame.height - ids.height} entities have two rows at "
                            f"{times[0]:%Y-%m-%d %H:%M}; a snapshot holds one row per entity")
    for older in times[1:]:
        missing = frame.filter(pl.col(stamp).is_null()).select(key)
        if missing.is_empty():
            break
        found = missing.lazy().join(rows.filter(pl.col(stamp) == older), on=key, how="inner").collect()
        if not found.is_empty():
            frame = frame.update(found, on=key, how="left")
    return frame


def default_as_of(ws: Workspace) -> datetime:
    """The newest feature snapshot: what materialize serves, and what a nightly run after
    ``features build`` scores (the grid's newest snapshot sees every event)."""
    return max(read_build_summary(ws.feature_tables).as_of)


def parse_as_of(text: str | None, option: str = "--as-of") -> datetime | None:
    """``YYYY-MM-DD`` (or an ISO datetime) → aware UTC datetime; None stays None.

    ``option`` is the command-line option the text came from (``--from``, ``--to``, ...),
    so that the error names the one to fix.
    """
    if text is None:
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise CrmscoreError(f"{option} {text!r}: expected a date, YYYY-MM-DD") from None


def population(lake: Path, task: str, as_of: datetime, mode: str | None = None) -> pl.DataFrame:
    """The entities ``task`` scores at ``as_of`` (one key column, sorted, unique): its
    population rule in the task registry, read from the lake. ``mode`` is the churn
    model's (subscription or transactional); other populations ignore it."""
    return get_task(task).population.from_lake(lake, as_of, mode)
