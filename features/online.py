"""Online reads by feature service, with a freshness check Feast does not make.

Feast serves whatever a feature view last materialized, however old: its TTL is
not enforced on online reads. Every read here therefore reports, per view and
entity row, the event time of the row served, its age and whether it is older
than the view's TTL (``stale``); an entity with no row is ``found=False`` and
counts as stale.

Two read paths return the same values:

* ``fast=True`` (default): per view of the service, the rows Feast's online
  store reads in ``online_read`` (SQLite: the view table's rows of the requested
  entity keys, grouped by SQLite into one row per entity from the ``value_text``
  Feast writes beside each value, the ValueProto blobs only where that text cannot
  give the value; Redis: one pipelined ``HMGET`` per entity of the hash fields
  Feast writes), without the Python around it: serialized entity keys and
  hash-field names are computed once and cached, each distinct stored value is
  turned into its Python value once and reused, timestamps are converted once per
  distinct value. Other online stores go through the provider's ``online_read``;
* ``fast=False``: ``FeatureStore.get_online_features`` (the SDK), for comparison
  and for stores the fast path has not been checked against.

The service's resolution (views, features, join keys, TTLs) is cached per store
and refreshed when Feast's registry cache is, so ``apply`` is picked up. Entity
keys and stored values are encoded and decoded by ``features.codec``, the module
that also defines what ``features.materialize`` writes.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crmdata.errors import CrmscoreError
from crmdata.times import as_utc
from features.codec import CACHE_LIMIT, decode_values, entity_keys, python_value

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
    #: Distinct id tuples -> (event time per id, value grid): see ``_reader``.
    read: Reader


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
    """Feature values (one row per requested entity row) plus freshness per view.

    ``columns`` holds the values as read: the join keys as lists of ids, each
    feature as a 1-D object array (Python values, ``None`` where missing); the
    request path scores straight from them.
    """

    service: str
    columns: dict[str, Any]
    n: int
    freshness: dict[str, ViewFreshness] = field(default_factory=dict)
    #: Per row: the features with no stored value although the row's view has a row (a
    #: partial row: fields deleted or never written). Empty when complete; a stored null
    #: is a value. The SDK path (``fast=False``) cannot tell and leaves this empty.
    absent: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def found(self) -> list[bool]:
        """Per row: did every view have a row for it?"""
        flags = [f.found for f in self.freshness.values()]
        return [all(row) for row in zip(*flags, strict=True)] if flags else []

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
            out.append(None if any(a is None for a in row) else max(0.0, max(row)))  # type: ignore[type-var]
        return out


#: Plans per store object, weakly: keyed by ``id(store)`` a new store could inherit a
#: collected one's plan (CPython reuses ids), and read another workspace's online store.
_PLANS: weakref.WeakKeyDictionary[FeatureStore, dict[str, _ServicePlan]] = weakref.WeakKeyDictionary()


def _plan(store: FeatureStore, service_name: str) -> _ServicePlan:
    plans = _PLANS.setdefault(store, {})
    cached = plans.get(service_name)
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
        features = tuple(f.name for f in projection.features)
        views.append(
            _ViewPlan(
                view=view,
                name=projection.name_to_use(),
                join_keys=keys,
                features=features,
                ttl_seconds=view.ttl.total_seconds() if view.ttl else None,
                read=_reader(store, view, keys, features),
            )
        )
        join_keys += [k for k in keys if k not in join_keys]
    plan = _ServicePlan(
        service=service_name, views=tuple(views), join_keys=tuple(join_keys), created=time.monotonic()
    )
    plans[service_name] = plan
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
    n = len(next(iter(rows.values())))
    columns: dict[str, Any] = dict(rows)
    freshness: dict[str, ViewFreshness] = {}
    absent: list[list[str]] = [[] for _ in range(n)]
    for view in plan.views:
        # Read each distinct key once (a recommendation request repeats the customer).
        ids = list(zip(*(rows[k] for k in view.join_keys), strict=True))
        position: dict[tuple[str, ...], int] = {}
        where = [position.setdefault(i, len(position)) for i in ids]
        stamps, grid, stored = view.read(list(position))
        if len(position) < n:
            stamps, grid, stored = [stamps[i] for i in where], grid[where], stored[where]
        for j, f in enumerate(view.features):
            columns[f] = grid[:, j]
        # A row that exists but lacks fields is partial: scoring it would treat the missing
        # features as "unknown" and answer as if complete. Usually no row is partial.
        found = np.fromiter((ts is not None for ts in stamps), dtype=bool, count=n)
        for i in np.flatnonzero(found & ~stored.all(axis=1)):
            absent[i] += [f for f, ok in zip(view.features, stored[i], strict=True) if not ok]
        freshness[view.name] = _freshness(view, stamps, now)
    return OnlineResult(service=plan.service, columns=columns, n=n, freshness=freshness,
                        absent=[tuple(a) for a in absent])


# --- readers: the online store's read, minus the per-call Python ----------------------
#
# A reader takes distinct entity-id tuples and returns, per id, the event time of the
# stored row (None: no row), a 2-D object grid of Python values, one row per id and
# one column per requested feature (None where missing), and a boolean grid of the same
# shape: was a value stored for that cell (a stored null counts; a deleted field does not). A batch of 100 customers is
# 3,700 stored values: they are decoded and placed with C-level maps and one numpy
# assignment, not a Python loop per value.

#: The event time of each distinct stored timestamp, per store kind (bounded like the
#: codec's caches).
_STAMPS: dict[Any, datetime | None] = {}

Reader = Callable[[list[tuple[str, ...]]], tuple[list[datetime | None], np.ndarray, np.ndarray]]


def _reader(store: FeatureStore, view: Any, join_keys: tuple[str, ...], features: tuple[str, ...]) -> Reader:
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    online = store._get_provider().online_store
    if type(online) is SqliteOnlineStore and not store.config.online_store.vector_enabled:
        return _sqlite_reader(store, online, view, join_keys, features)
    if type(online) is RedisOnlineStore and store.config.online_store.client == "redis":
        return _redis_reader(store, online, view, join_keys, features)
    return _provider_reader(store, view, join_keys, features)


def _sqlite_reader(store: FeatureStore, online: Any, view: Any, join_keys: tuple[str, ...], features: tuple[str, ...]) -> Reader:
    """``SqliteOnlineStore.online_read``: same table, same rows, same timestamp
    conversion (Feast's registered ``timestamp`` converter, applied once per
    distinct stored value instead of per row).

    Feast stores one row per (entity, feature), and Python's ``sqlite3`` spends
    ~2 µs building each row's objects: 3,700 rows for 100 customers cost ~8 ms,
    SQLite's own work ~1 ms. So SQLite hands back one row per entity instead: its
    row count, event time and ``name<US>value_text`` pairs joined by ``<RS>``
    (``value_text`` is the text form Feast writes beside each value: ``str()`` of
    a number or bool, the string itself). A pair is turned into (column, value)
    once per distinct pair and looked up after that. Where the text cannot give
    the value the blob would (a type without text, an int where a float is declared,
    a separator inside a string: the count does not match), that entity is read
    row by row from the blobs, as Feast does."""
    import sqlite3

    from feast.infra.online_stores.sqlite import _quote_id, _table_id

    config = store.config
    table = _quote_id(_table_id(config.project, view, config.registry.enable_online_feature_view_versioning))
    version = config.entity_key_serialization_version
    path = online._get_db_path(config)
    convert = sqlite3.converters.get("TIMESTAMP")
    width = len(features)

    class Columns(dict[str, int]):
        def __missing__(self, name: str) -> int:
            return width  # a feature of the view this service does not use: a spare column

    column_of = Columns((f, j) for j, f in enumerate(features))
    kinds = {f.name: f.dtype.to_value_type().name for f in view.features}
    state: dict[str, Any] = {}

    # Shared by the readers of the same table and columns: a plan is rebuilt every
    # PLAN_TTL_SECONDS, and its pairs would be learnt again.
    memo = (path, table, features, tuple(sorted(kinds.items())))
    pairs = _PAIRS.get(memo)
    if pairs is None:
        pairs = _PAIRS[memo] = _Pairs(column_of, kinds, width)

    def conn() -> sqlite3.Connection:
        # A connection of our own without per-row type converters (Feast's has them),
        # reopened when the file is replaced (a rebuilt workspace): an open connection
        # would go on reading the old, unlinked file. mode=rw never creates an empty store
        # where there is none; a missing file raises (the service answers 503).
        stat = os.stat(path)
        identity = (stat.st_dev, stat.st_ino)
        if state.get("identity") != identity:
            previous = state.get("conn")
            state["conn"] = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True,
                                            check_same_thread=False)
            state["identity"] = identity
            if previous is not None:
                previous.close()
        return state["conn"]

    def stamp(raw: Any) -> datetime | None:
        memo = ("sqlite", raw)
        ts = _STAMPS.get(memo)
        if ts is None and raw is not None:
            value = raw
            if convert is not None:
                value = convert(raw if isinstance(raw, bytes) else str(raw).encode())
            ts = as_utc(value) if isinstance(value, datetime) else None
            if ts is not None and len(_STAMPS) < CACHE_LIMIT:
                _STAMPS[memo] = ts
        return ts

    def read(ids: list[tuple[str, ...]]) -> tuple[list[datetime | None], np.ndarray, np.ndarray]:
        keys = entity_keys(join_keys, ids, version)
        grid = np.full((len(keys), width + 1), None, dtype=object)
        stored = np.zeros((len(keys), width + 1), dtype=bool)
        stamps: list[datetime | None] = [None] * len(keys)
        db = conn()
        # Each entity comes back with its key's position in the request (a small int), so
        # it lands in its grid row without a lookup by key.
        sql = (f"WITH q(i, k) AS (VALUES {','.join(['(?, ?)'] * len(keys))}) "
               f"SELECT q.i, (SELECT count(*) || '{_GS}' || max(t.event_ts) || '{_GS}' || group_concat("
               f"t.feature_name || '{_US}' || CASE WHEN t.value_text IS NOT NULL THEN 'v' || t.value_text "
               f"WHEN t.value IS NULL OR length(t.value) = 0 THEN 'n' ELSE 'x' END, '{_RS}') "
               f"FROM {table} t WHERE t.entity_key = q.k) FROM q")
        found = db.execute(sql, [v for item in enumerate(keys) for v in item]).fetchall()
        rows: list[int] = []
        texts: list[str] = []
        slow: list[int] = []
        for i, packed in found:
            if packed is None:
                continue  # no row
            count, raw, body = packed.split(_GS, 2)
            parts = body.split(_RS)
            if len(parts) != int(count):
                slow.append(i)
                continue
            stamps[i] = stamp(raw)
            rows += [i] * len(parts)
            texts += parts
        if texts:
            cells = list(map(pairs.__getitem__, texts))
            if None in cells:  # entities whose text does not give the value: read their blobs
                bad = {rows[k] for k, c in enumerate(cells) if c is None}
                slow += sorted(bad)
                keep = [k for k, r in enumerate(rows) if r not in bad]
                rows, cells = [rows[k] for k in keep], [cells[k] for k in keep]
                for i in bad:
                    stamps[i] = None
            if cells:
                columns, values = zip(*cells)  # type: ignore[arg-type]
                placed = np.empty(len(values), dtype=object)
                placed[:] = values
                grid[rows, columns] = placed
                stored[rows, columns] = True
        if slow:
            _blob_rows(db, table, [keys[i] for i in slow], slow, column_of, grid, stored, stamps, stamp)
        for i, ts in enumerate(stamps):
            if ts is None:  # no usable time: Feast answers no row
                grid[i] = None
        return stamps, grid[:, :width], stored[:, :width]

    return read


#: Separators of the grouped SQLite read (ASCII group, record and unit separators).
_GS, _RS, _US = "\x1d", "\x1e", "\x1f"
#: Pairs learnt per (store file, table, columns, types): see ``_Pairs``.
_PAIRS: dict[tuple[Any, ...], _Pairs] = {}
#: Bound of each ``_Pairs`` (cleared when full), like the codec's caches: ~200 bytes an entry.
PAIRS_LIMIT = CACHE_LIMIT


class _Pairs(dict[str, tuple[int, Any] | None]):
    """"<name><US><tag><text>" -> (column, value), or None when the text does not give the
    value; filled on first sight, so a read is one C-level lookup per value it has seen."""

    def __init__(self, column_of: Mapping[str, int], kinds: Mapping[str, str], spare: int) -> None:
        super().__init__()
        self.column_of, self.kinds, self.spare = column_of, kinds, spare

    def __missing__(self, text: str) -> tuple[int, Any] | None:
        name, _, tagged = text.partition(_US)
        column = self.column_of[name]
        tag = tagged[:1]
        found: tuple[int, Any] | None
        if tag == "n" or column == self.spare:
            found = (column, None)  # a stored null; or a spare column, whose value is not used
        elif tag == "v":
            found = _from_text(self.kinds.get(name), tagged[1:], column)
        else:
            found = None
        if len(self) >= PAIRS_LIMIT:
            self.clear()
        self[text] = found
        return found


def _from_text(kind: str | None, text: str, column: int) -> tuple[int, Any] | None:
    """The value ``decode_values`` would give a stored value of Feast type ``kind`` whose
    ``value_text`` is ``text``, or None when the text alone cannot say it exactly."""
    if kind == "STRING":
        return column, text
    if kind in ("INT64", "INT32"):
        try:
            return column, int(text)
        except ValueError:
            return None
    if kind in ("DOUBLE", "FLOAT"):
        # str() of a float always has one of these; "3" is an int stored in a float column,
        # which the blob answers as an int.
        if "." not in text and "e" not in text and "n" not in text:
            return None
        try:
            return column, float(text)
        except ValueError:
            return None
    if kind == "BOOL" and text in ("True", "False"):
        return column, text == "True"
    return None


def _blob_rows(db: Any, table: str, keys: list[bytes], rows: list[int], column_of: Mapping[str, int],
               grid: np.ndarray, stored: np.ndarray, stamps: list[datetime | None],
               stamp: Callable[[Any], datetime | None]) -> None:
    """The row-per-feature read of some entities, decoding the stored ValueProto blobs."""
    sql = (f"WITH q(i, k) AS (VALUES {','.join(['(?, ?)'] * len(keys))}) "
           f"SELECT q.i, t.feature_name, t.value, t.event_ts FROM q JOIN {table} t ON t.entity_key = q.k")
    found = db.execute(sql, [v for item in zip(rows, keys, strict=True) for v in item]).fetchall()
    if not found:
        return
    at, names, blobs, times = zip(*found, strict=True)
    cells = list(map(column_of.__getitem__, names))
    grid[at, cells] = decode_values(blobs)
    stored[at, cells] = True
    # Feast keeps the last row's time (all rows of an entity share it): so does dict().
    for i, raw in dict(zip(at, times, strict=True)).items():
        stamps[i] = stamp(raw)


def _redis_reader(store: FeatureStore, online: Any, view: Any, join_keys: tuple[str, ...], features: tuple[str, ...]) -> Reader:
    """``RedisOnlineStore.online_read``: one pipelined ``HMGET`` per entity of the
    same hash fields (``_mmh3("<view>:<feature>")`` and ``_ts:<view>``), computed once."""
    from itertools import chain

    from feast.infra.online_stores.redis import _versioned_fv_name
    from google.protobuf.timestamp_pb2 import Timestamp

    config = store.config
    requested, fields = online._generate_hset_keys_for_features(
        view, list(features), fv_name_override=_versioned_fv_name(view, config)
    )
    assert requested[-1].startswith("_ts:") and requested[:-1] == list(features)
    width = len(features)
    project = config.project.encode("utf-8")
    version = config.entity_key_serialization_version

    def stamp(raw: bytes | None) -> datetime | None:
        if not raw:
            return None  # Feast answers the epoch: no row
        memo = ("redis", raw)
        ts = _STAMPS.get(memo)
        if ts is None:
            proto = Timestamp()
            proto.ParseFromString(raw)
            seconds = proto.seconds + proto.nanos / 1_000_000_000.0
            ts = datetime.fromtimestamp(seconds, tz=UTC) if seconds > 0 else None
            if ts is not None and len(_STAMPS) < CACHE_LIMIT:
                _STAMPS[memo] = ts
        return ts

    state: dict[str, Any] = {}

    def read(ids: list[tuple[str, ...]]) -> tuple[list[datetime | None], np.ndarray, np.ndarray]:
        keys = [k + project for k in entity_keys(join_keys, ids, version)]
        if "client" not in state:
            state["client"] = _fail_fast_client(online, config.online_store)
        with state["client"].pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, fields)
            replies = pipe.execute()
        stamps = [stamp(reply[width]) for reply in replies]
        flat = list(chain.from_iterable(replies))
        grid = decode_values(flat).reshape(len(keys), width + 1)
        stored = np.fromiter((v is not None for v in flat), dtype=bool, count=len(flat)).reshape(len(keys), width + 1)
        for i, ts in enumerate(stamps):
            if ts is None:
                grid[i] = None
        return stamps, grid[:, :width], stored[:, :width]

    return read


def _fail_fast_client(online: Any, settings: Any) -> Any:
    """A client on Feast's connection settings (host, db, password, socket timeouts) with
    one immediate retry, for a connection Redis dropped, instead of redis-py's default of
    three with exponential backoff: that adds ~7 s to every call while Redis is down or
    partitioned, so a request would wait instead of getting its 503 within the timeouts.
    Cluster and Sentinel setups keep Feast's own client."""
    from feast.infra.online_stores.redis import RedisType

    if settings.redis_type != RedisType.redis:
        return online._get_client(settings)
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    nodes, options = online._parse_connection_string(settings.connection_string)
    return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **options, retry=Retry(NoBackoff(), 1))


def _provider_reader(store: FeatureStore, view: Any, join_keys: tuple[str, ...], features: tuple[str, ...]) -> Reader:
    """Any other online store: the provider's ``online_read``."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.type_map import feast_value_type_to_python_type

    def read(ids: list[tuple[str, ...]]) -> tuple[list[datetime | None], np.ndarray, np.ndarray]:
        keys = [
            EntityKeyProto(join_keys=list(join_keys), entity_values=[ValueProto(string_val=v) for v in values])
            for values in ids
        ]
        result = store._get_provider().online_read(
            config=store.config, table=view, entity_keys=keys, requested_features=list(features)
        )
        stamps: list[datetime | None] = []
        grid = np.full((len(keys), len(features)), None, dtype=object)
        stored = np.zeros((len(keys), len(features)), dtype=bool)
        for i, (ts, data) in enumerate(result):
            # Redis-like stores answer a missing key with the epoch as timestamp.
            if not data or ts is None or ts.timestamp() <= 0:
                stamps.append(None)
                continue
            stamps.append(None if ts is None else as_utc(ts))
            for j, f in enumerate(features):
                grid[i, j] = python_value(data.get(f), feast_value_type_to_python_type)
                stored[i, j] = f in data
        return stamps, grid, stored

    return read


def _read_sdk(
    store: FeatureStore, plan: _ServicePlan, rows: dict[str, list[str]], now: datetime
) -> OnlineResult:
    service = store.get_feature_service(plan.service, allow_cache=True)
    n = len(next(iter(rows.values())))
    entity_rows = [{k: rows[k][i] for k in rows} for i in range(n)]
    response = store.get_online_features(features=service, entity_rows=entity_rows)
    data = response.to_dict(include_event_timestamps=True)
    columns: dict[str, Any] = dict(rows)
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
    return OnlineResult(service=plan.service, columns=columns, n=n, freshness=freshness, absent=[()] * n)
