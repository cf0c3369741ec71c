"""The one training-frame builder: labels in, point-in-time features out.

Every training job passes its labels (entity ids, cutoff in ``event_timestamp``,
label columns) and a feature-service name; the features come from the offline
store through that service (``get_historical_features``), so no job retypes a
feature list. Feast's point-in-time join returns, for each row, the newest
snapshot with ``event_timestamp <= cutoff`` and younger than the view's TTL; a
snapshot only holds events strictly before its own date, so no feature value
uses anything at or after the cutoff.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pandas as pd
import polars as pl

from crmdata.errors import CrmscoreError
from features.catalog import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

log = logging.getLogger(__name__)


def service_join_keys(store: FeatureStore, service: FeatureService) -> list[str]:
    keys: list[str] = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name, allow_registry_cache=True)
        keys += [c.name for c in view.entity_columns if c.name not in keys]
    return keys


def service_features(service: FeatureService) -> list[str]:
    """The service's feature columns, in its order (the model's input order)."""
    return [f.name for p in service.feature_view_projections for f in p.features]


def training_frame(
    store: FeatureStore,
    service_name: str,
    labels: pd.DataFrame | pl.DataFrame,
) -> pd.DataFrame:
    """Labels joined with the service's features as of each row's ``event_timestamp``.

    Returns the label rows in their order (duplicates kept), label columns first,
    then the service's features in service order. Rows with no snapshot within the
    TTL before their cutoff get nulls (and a warning with their count).
    """
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(service_name)
    except FeatureServiceNotFoundException:
        raise CrmscoreError(
            f"feature service {service_name!r} is not registered; run `crmscore features apply`"
        ) from None
    frame = labels.to_pandas() if isinstance(labels, pl.DataFrame) else labels.copy()
    keys = service_join_keys(store, service)
    missing = [c for c in (*keys, EVENT_TIMESTAMP) if c not in frame.columns]
    if missing:
        raise CrmscoreError(f"labels for {service_name} lack columns: {', '.join(missing)}")
    stamps = pd.to_datetime(frame[EVENT_TIMESTAMP])
    frame[EVENT_TIMESTAMP] = (
        stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    )
    for key in keys:
        frame[key] = frame[key].astype(str)
    features = service_features(service)
    clash = [c for c in features if c in frame.columns and c not in keys]
    if clash:
        raise CrmscoreError(f"label columns clash with features of {service_name}: {clash}")

    # Feast collapses duplicate (entity, cutoff) rows; ask once per pair, join back.
    entity_df = frame[[*keys, EVENT_TIMESTAMP]].drop_duplicates(ignore_index=True)
    started = time.perf_counter()
    job = store.get_historical_features(entity_df=entity_df, features=service)
    fetched = job.to_df()
    log.info(
        "%s: %d rows x %d features in %.1fs",
        service_name,
        len(entity_df),
        len(features),
        time.perf_counter() - started,
    )
    fetched[EVENT_TIMESTAMP] = pd.to_datetime(fetched[EVENT_TIMESTAMP], utc=True)
    out = frame.merge(
        fetched[[*keys, EVENT_TIMESTAMP, *features]], on=[*keys, EVENT_TIMESTAMP], how="left"
    )
    if len(out) != len(frame):
        raise CrmscoreError(f"{service_name}: the offline store returned duplicate rows")
    empty = int(out[features].isna().all(axis=1).sum()) if features else 0
    if empty:
        log.warning(
            "%s: %d of %d rows have no feature snapshot within the TTL before their cutoff "
            "(build features at these cutoffs: build_features(..., as_of=cutoffs))",
            service_name,
            empty,
            len(out),
        )
    return out
