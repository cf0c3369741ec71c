"""Online reads by feature service, with a freshness check Feast does not make.

Feast serves whatever a feature view last materialized, however old: its TTL is
not enforced on online reads. Every read here therefore reports, per view and
entity row, the event time of the row served, its age and whether it is older
than the view's TTL (``stale``); an entity with no row is ``found=False`` and
counts as stale.

Two read paths return the same values:

* ``fast=True`` (default): the provider's ``online_read`` per view of the
  service, i.e. the same online-store tables and keys Feast writes (SQLite rows,
  Redis hashes), without ``get_online_features``' per-call request building;
* ``fast=False``: ``FeatureStore.get_online_features`` (the SDK), for comparison
  and for stores the fast path has not been checked against.

The service's resolution (views, features, join keys, TTLs) is cached per store
and refreshed when Feast's registry cache is, so ``apply`` is picked up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.errors import CrmscoreError

if TYPE_CHECKING:
    from feast import FeatureStore

#: How long a resolved service plan is reused before asking the registry again.
PLAN_TTL_SECONDS = 30.0


@dataclass(frozen=True)
class _ViewPlan:
    view: Any  # feast.FeatureView (with the service's projection applied)
    name: str
    join_keys: tuple[str, ...]
    features: tuple[str, ...]
    ttl_seconds: float | None


@dataclass(frozen=True)
class _ServicePlan:
    service: str
    views: tuple[_ViewPlan, ...]
    join_keys: tuple[str, ...]
    created: float


@dataclass(frozen=True)
class ViewFreshness:
    """Per requested row: when the served row was computed, its age and staleness."""

    view: str
    ttl_seconds: float | None
    event_timestamp: list[datetime | None]
    age_seconds: list[float | None]
    stale: list[bool]
    found: list[bool]


@dataclass(frozen=True)
class OnlineResult:
    """Feature values (one row per requested entity row) plus freshness per view."""

    service: str
    features: pd.DataFrame
    freshness: dict[str, ViewFreshness] = field(default_factory=dict)

    @property
    def stale(self) -> list[bool]:
        """Per row: is any of its views stale (or missing)?"""
        flags = [f.stale for f in self.freshness.values()]
        return [any(row) for row in zip(*flags, strict=True)] if flags else []

    @property
    def max_age_seconds(self) -> list[float | None]:
        """Per row: the age of its oldest view row (None when a view had no row)."""
        ages = [f.age_seconds for f in self.freshness.values()]
        out: list[float | None] = []
        for row in zip(*ages, strict=True):
            out.append(None if any(a is None for a in row) else max(row))  # type: ignore[type-var]
        return out

    def freshness_frame(self) -> pd.DataFrame:
        """Long format: one row per (entity row, view)."""
        parts = [
            pd.DataFrame(
                {
                    "row": range(len(f.stale)),
                    "view": f.view,
                    "event_timestamp": f.event_timestamp,
                    "age_seconds": f.age_seconds,
                    "ttl_seconds": f.ttl_seconds,
                    "stale": f.stale,
                    "found": f.found,
                }
            )
            for f in self.freshness.values()
        ]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


_PLANS: dict[tuple[int, str], _ServicePlan] = {}


def _plan(store: FeatureStore, service_name: str) -> _ServicePlan:
    key = (id(store), service_name)
    cached = _PLANS.get(key)
    if cached is not None and time.monotonic() - cached.created < PLAN_TTL_SECONDS:
        return cached
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(service_name, allow_cache=True)
    except FeatureServiceNotFoundException:
        raise CrmscoreError(
            f"feature service {service_name!r} is not registered; run `crmscore features apply`"
        ) from None
    views = []
    join_keys: list[str] = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name, allow_registry_cache=True)
        view = view.with_projection(projection)
        keys = tuple(c.name for c in view.entity_columns)
        views.append(
            _ViewPlan(
                view=view,
                name=projection.name_to_use(),
                join_keys=keys,
                features=tuple(f.name for f in projection.features),
                ttl_seconds=view.ttl.total_seconds() if view.ttl else None,
            )
        )
        join_keys += [k for k in keys if k not in join_keys]
    plan = _ServicePlan(
        service=service_name, views=tuple(views), join_keys=tuple(join_keys), created=time.monotonic()
    )
    _PLANS[key] = plan
    return plan


def _rows(plan: _ServicePlan, entity_ids: Sequence[str] | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    if isinstance(entity_ids, Mapping):
        rows = {k: [str(v) for v in entity_ids[k]] for k in entity_ids}
    else:
        if len(plan.join_keys) != 1:
            raise CrmscoreError(
                f"{plan.service} needs {', '.join(plan.join_keys)}: pass a mapping of id lists"
            )
        rows = {plan.join_keys[0]: [str(v) for v in entity_ids]}
    missing = [k for k in plan.join_keys if k not in rows]
    if missing:
        raise CrmscoreError(f"{plan.service} needs entity ids for {', '.join(missing)}")
    lengths = {len(v) for v in rows.values()}
    if len(lengths) > 1:
        raise CrmscoreError(f"{plan.service}: the id lists differ in length")
    return {k: rows[k] for k in plan.join_keys}


def _freshness(
    view: _ViewPlan, stamps: list[datetime | None], now: datetime
) -> ViewFreshness:
    ages = [None if ts is None else (now - ts).total_seconds() for ts in stamps]
    stale = [
        age is None or (view.ttl_seconds is not None and age > view.ttl_seconds) for age in ages
    ]
    return ViewFreshness(
        view=view.name,
        ttl_seconds=view.ttl_seconds,
        event_timestamp=stamps,
        age_seconds=ages,
        stale=stale,
        found=[ts is not None for ts in stamps],
    )


def read_online(
    store: FeatureStore,
    service_name: str,
    entity_ids: Sequence[str] | Mapping[str, Sequence[str]],
    *,
    now: datetime | None = None,
    fast: bool = True,
) -> OnlineResult:
    """Online features of a service for entity rows, with per-view age and stale flags.

    ``entity_ids`` is a list of ids when the service has one join key
    (``["C1", "C2"]``), else a mapping join key -> ids of equal length
    (``{"customer_id": [...], "product_id": [...]}``).
    """
    plan = _plan(store, service_name)
    rows = _rows(plan, entity_ids)
    now = now or datetime.now(UTC)
    if fast:
        return _read_fast(store, plan, rows, now)
    return _read_sdk(store, plan, rows, now)


def _read_fast(
    store: FeatureStore, plan: _ServicePlan, rows: dict[str, list[str]], now: datetime
) -> OnlineResult:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.type_map import feast_value_type_to_python_type

    provider = store._get_provider()
    n = len(next(iter(rows.values())))
    columns: dict[str, list[Any]] = dict(rows)
    freshness: dict[str, ViewFreshness] = {}
    for view in plan.views:
        # Read each distinct key once (a recommendation request repeats the customer).
        ids = list(zip(*(rows[k] for k in view.join_keys), strict=True))
        unique = list(dict.fromkeys(ids))
        keys = [
            EntityKeyProto(
                join_keys=list(view.join_keys),
                entity_values=[ValueProto(string_val=v) for v in values],
            )
            for values in unique
        ]
        read = provider.online_read(
            config=store.config, table=view.view, entity_keys=keys, requested_features=list(view.features)
        )
        by_id = dict(zip(unique, read, strict=True))
        stamps: list[datetime | None] = []
        values_by_feature: dict[str, list[Any]] = {f: [] for f in view.features}
        for values in ids:
            ts, data = by_id[values]
            # Redis answers a missing key with the epoch as timestamp (Feast's own
            # response calls that NOT_FOUND too).
            found = bool(data) and ts is not None and ts.timestamp() > 0
            stamps.append(_utc(ts) if found else None)
            if not found:
                data = None
            for f in view.features:
                proto = data.get(f) if data else None
                values_by_feature[f].append(_python(proto, feast_value_type_to_python_type))
        columns.update(values_by_feature)
        freshness[view.name] = _freshness(view, stamps, now)
    frame = pd.DataFrame(columns, index=range(n))
    return OnlineResult(service=plan.service, features=frame, freshness=freshness)


def _read_sdk(
    store: FeatureStore, plan: _ServicePlan, rows: dict[str, list[str]], now: datetime
) -> OnlineResult:
    service = store.get_feature_service(plan.service, allow_cache=True)
    n = len(next(iter(rows.values())))
    entity_rows = [{k: rows[k][i] for k in rows} for i in range(n)]
    response = store.get_online_features(features=service, entity_rows=entity_rows)
    data = response.to_dict(include_event_timestamps=True)
    columns: dict[str, list[Any]] = dict(rows)
    freshness: dict[str, ViewFreshness] = {}
    for view in plan.views:
        for f in view.features:
            columns[f] = data[f]
        # Feast reports a timestamp per feature; a view's features share the row's.
        first = view.features[0] if view.features else None
        stamps: list[datetime | None] = []
        for i in range(n):
            seconds = data[f"{first}__ts"][i] if first else 0
            found = first is not None and seconds > 0
            stamps.append(datetime.fromtimestamp(seconds, UTC) if found else None)
        freshness[view.name] = _freshness(view, stamps, now)
    frame = pd.DataFrame(columns, index=range(n))
    return OnlineResult(service=plan.service, features=frame, freshness=freshness)


#: Scalar ValueProto fields read directly; anything else goes through Feast's converter.
_SCALARS = frozenset({"int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val"})


def _python(proto: Any, convert: Any) -> Any:
    if proto is None:
        return None
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(proto, kind) if kind in _SCALARS else convert(proto)


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
