"""The Feast store per profile, and registering and materializing the repository.

Two profiles, one code path (DESIGN.md):

* ``local`` (embedded, the default): file offline store over the workspace's
  feature tables, SQLite online store and a file registry, both in
  ``Workspace.feast``;
* ``redis`` (production): Redis online store (``CRMSCORE_REDIS_URL``) and a SQL
  registry on PostgreSQL (``CRMSCORE_REGISTRY_URL``); offline data stays the
  same feature tables.

The Feast objects come from the definition modules (``entities``,
``data_sources``, ``feature_views``, ``feature_services``); ``repository_objects``
copies them and points the data sources at a workspace, so a process (a test
suite, a service) can register several workspaces without re-importing them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlparse

import yaml
from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from features.build import read_build_summary
from features.catalog import (
    ATTRIBUTE_PREFIX,
    EVENT_TIMESTAMP,
    FEATURES,
    VIEW_NAMES,
    VIEW_TTL,
    table_file,
)

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

PROJECT = "crmscore"
REDIS_URL_ENV = "CRMSCORE_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REGISTRY_URL_ENV = "CRMSCORE_REGISTRY_URL"
DEFAULT_REGISTRY_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
#: File names inside Workspace.feast (embedded profile).
REGISTRY_FILE = "registry.db"
ONLINE_FILE = "online_store.db"
#: A resolved copy of the config, for Feast's CLI on a non-default workspace.
FEATURE_STORE_YAML = "feature_store.yaml"
#: How long a process trusts its cached registry; `apply` refreshes explicitly.
REGISTRY_CACHE_TTL_SECONDS = 60


class Profile(StrEnum):
    LOCAL = "local"
    REDIS = "redis"


class StoreSettings(BaseModel):
    """Everything that differs between profiles, resolved from arguments and environment."""

    profile: Profile = Profile.LOCAL
    project: str = PROJECT
    redis_url: str = Field(default_factory=lambda: os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL)
    registry_url: str = Field(
        default_factory=lambda: os.environ.get(REGISTRY_URL_ENV) or DEFAULT_REGISTRY_URL
    )


#: Seconds. Without them a partitioned Redis (no reset, no answer) hangs a scoring request
#: until BentoML's 30 s timeout; with them it is a 503 in seconds, and /readyz goes false.
#: Override per URL: ``redis://host:6379/0?socket_timeout=1``.
REDIS_TIMEOUTS: dict[str, float] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}


def redis_connection_string(url: str) -> str:
    """``redis://[:password@]host:port/db[?socket_timeout=S]`` -> Feast's
    ``host:port,db=N[,password=..][,ssl=true],socket_connect_timeout=S,socket_timeout=S``."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise CrmscoreError(f"{REDIS_URL_ENV}={url!r}: expected redis://host:port/db")
    timeouts = dict(REDIS_TIMEOUTS)
    for name, value in parse_qsl(parsed.query, keep_blank_values=True):
        if name not in timeouts:
            raise CrmscoreError(f"{REDIS_URL_ENV}: unknown option {name!r}; supported: {', '.join(timeouts)}")
        try:
            timeouts[name] = float(value)
        except ValueError:
            raise CrmscoreError(f"{REDIS_URL_ENV}: {name}={value!r} is not a number of seconds") from None
        if not timeouts[name] > 0:
            raise CrmscoreError(f"{REDIS_URL_ENV}: {name} must be positive, got {value}")
    host = parsed.hostname or "127.0.0.1"
    parts = [f"{host}:{parsed.port or 6379}", f"db={int(parsed.path.strip('/') or 0)}"]
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    if parsed.username and parsed.username != "default":
        parts.append(f"username={unquote(parsed.username)}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    parts += [f"{name}={value:g}" for name, value in timeouts.items()]
    return ",".join(parts)


def config_dict(ws: Workspace, settings: StoreSettings) -> dict[str, Any]:
    """The ``feature_store.yaml`` content for a workspace and profile."""
    config: dict[str, Any] = {
        "project": settings.project,
        "provider": "local",
        # DuckDB reads the same parquet feature tables ~30x faster than the file (dask) store
        # for point-in-time joins (200k-row training frames in seconds, not minutes).
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }
    if settings.profile == Profile.LOCAL:
        config["registry"] = {
            "registry_type": "file",
            "path": str(ws.feast / REGISTRY_FILE),
            "cache_ttl_seconds": REGISTRY_CACHE_TTL_SECONDS,
        }
        config["online_store"] = {"type": "sqlite", "path": str(ws.feast / ONLINE_FILE)}
    else:
        config["registry"] = {
            "registry_type": "sql",
            "path": settings.registry_url,
            "cache_ttl_seconds": REGISTRY_CACHE_TTL_SECONDS,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        }
        config["online_store"] = {
            "type": "redis",
            "connection_string": redis_connection_string(settings.redis_url),
        }
    return config


def repo_config(ws: Workspace, settings: StoreSettings | None = None) -> RepoConfig:
    from feast.repo_config import RepoConfig

    settings = settings or StoreSettings()
    ws.feast.mkdir(parents=True, exist_ok=True)
    # repo_path anchors relative paths; ours are absolute, so it only names the repo.
    return RepoConfig(repo_path=ws.feature_tables, **config_dict(ws, settings))


def feature_store(
    ws: Workspace, profile: Profile | str = Profile.LOCAL, **settings: Any
) -> FeatureStore:
    """The Feast store of a workspace under one profile (``local`` or ``redis``)."""
    from feast import FeatureStore

    resolved = StoreSettings(profile=Profile(profile), **settings)
    return FeatureStore(config=repo_config(ws, resolved))


def write_feature_store_yaml(ws: Workspace, settings: StoreSettings) -> Path:
    """Write the resolved config next to the registry, for ``feast -f`` on this workspace."""
    path = ws.feast / FEATURE_STORE_YAML
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by `crmscore features apply`; use with Feast's CLI from features/:\n"
        f"#   feast -f {path} ui\n" + yaml.safe_dump(config_dict(ws, settings), sort_keys=False)
    )
    return path


# --- the repository ----------------------------------------------------------------


def repository_objects(feature_tables: Path) -> list[Any]:
    """Copies of every Feast object of ``features/``, reading ``feature_tables``."""
    from feast import FileSource

    from features import data_sources, entities, feature_services, feature_views

    objects: list[Any] = []
    for module in (entities, data_sources, feature_views, feature_services):
        for name in sorted(vars(module)):
            obj = getattr(module, name)
            if _is_feast_object(obj) and not any(obj is o for o in objects):
                objects.append(obj)
    # One deepcopy keeps the sharing (a view and its source stay the same object),
    # and leaves the module-level objects pristine for the next workspace.
    objects = copy.deepcopy(objects)
    # Score tables live beside the feature tables, under the same workspace home.
    scores = Workspace(feature_tables.parent).scores
    for obj in objects:
        if isinstance(obj, FileSource):
            base = scores if obj.tags.get("table") == "scores" else feature_tables
            obj.file_options.uri = str(base / Path(obj.path).name)
    return objects


def _is_feast_object(obj: Any) -> bool:
    from feast import Entity, FeatureService, FeatureView, FileSource, PushSource

    return isinstance(obj, Entity | FileSource | PushSource | FeatureView | FeatureService)


class ApplySummary(BaseModel):
    project: str
    profile: Profile
    feature_views: dict[str, int]
    feature_services: dict[str, list[str]]
    seconds: float

    def render(self) -> str:
        views = ", ".join(f"{v} ({n} features)" for v, n in self.feature_views.items())
        services = ", ".join(self.feature_services)
        return (
            f"registered project {self.project} ({self.profile}) in {self.seconds:.1f}s\n"
            f"  views: {views}\n  services: {services}"
        )


def apply_repository(
    store: FeatureStore, feature_tables: Path, profile: Profile | str = Profile.LOCAL
) -> ApplySummary:
    """Register entities, sources, views and services; views infer their schema from
    the feature tables, so ``crmscore features build`` must have run first."""
    from feast import FeatureService, FeatureView

    read_build_summary(feature_tables)  # a clear error if nothing was built
    started = time.perf_counter()
    objects = repository_objects(feature_tables)
    store.apply(objects)
    store.refresh_registry()
    registered = store.list_feature_views()
    _check_types(registered)
    views = {v.name: len(v.features) for v in registered}
    services = {
        s.name: [p.name for p in s.feature_view_projections]
        for s in store.list_feature_services()
    }
    expected_views = {o.name for o in objects if isinstance(o, FeatureView)}
    expected_services = {o.name for o in objects if isinstance(o, FeatureService)}
    if not expected_views <= set(views) or not expected_services <= set(services):
        raise CrmscoreError("feast apply did not register every view and service")
    return ApplySummary(
        project=store.project,
        profile=Profile(profile),
        feature_views=views,
        feature_services=services,
        seconds=round(time.perf_counter() - started, 3),
    )


#: Catalogue kind -> the Feast type a feature of that kind must be registered with.
_FEAST_TYPES = {"str": "String", "int": "Int64", "float": "Float64"}


def _check_types(views: list[Any]) -> None:
    """Feast infers types from the parquet schema; hold it to the catalogue's kinds,
    so categoricals are always String and counts Int64 for every consumer."""
    expected = {
        VIEW_NAMES[entity]: {s.name: _FEAST_TYPES[s.kind] for s in specs}
        for entity, specs in FEATURES.items()
    }
    wrong = []
    for view in views:
        if view.name not in expected:  # score views declare their schema (feature_views.py)
            continue
        kinds = expected.get(view.name, {})
        for feature in view.features:
            want = kinds.get(feature.name)
            if feature.name.startswith(ATTRIBUTE_PREFIX):
                want = want or ("String", "Float64")
            got = str(feature.dtype)
            if want is None or (got not in want if isinstance(want, tuple) else got != want):
                wrong.append(f"{view.name}:{feature.name} is {got}, expected {want or 'no such feature'}")
    if wrong:
        raise CrmscoreError("feature types differ from features/catalog.py: " + "; ".join(wrong))


class MaterializeSummary(BaseModel):
    project: str
    snapshot: datetime
    rows: dict[str, int]
    seconds: float

    def render(self) -> str:
        rows = ", ".join(f"{v}: {n:,}" for v, n in self.rows.items())
        return (
            f"materialized snapshot {self.snapshot:%Y-%m-%d %H:%M} UTC into the online store "
            f"of {self.project} in {self.seconds:.1f}s ({rows})"
        )


def materialize_latest(
    store: FeatureStore,
    feature_tables: Path,
    views: list[str] | None = None,
    *,
    fast: bool = True,
) -> MaterializeSummary:
    """Load each entity's latest snapshot into the online store.

    Every entity that exists at the newest snapshot has a row there, so the window
    ``[newest - TTL, newest]`` holds every latest value; Feast keeps the newest row
    per entity when several fall in it.

    ``fast=True`` (default) writes the same rows as Feast's ``materialize`` in bulk
    (see ``_materialize_bulk``) for the stores it has been checked against (SQLite,
    Redis); any other view or store, and ``fast=False``, go through
    ``FeatureStore.materialize``.
    """
    import polars as pl

    summary = read_build_summary(feature_tables)
    newest = max(summary.as_of)
    # Only the feature views: the score views are fed by `crmscore push-scores`.
    views = list(VIEW_NAMES.values()) if views is None else views
    start_date, end_date = newest - VIEW_TTL, newest + timedelta(seconds=1)
    started = time.perf_counter()
    # Feast prints progress bars to stdout; the summary below says what happened.
    with contextlib.redirect_stdout(io.StringIO()):
        rest: list[str] | None = views
        if fast:
            rest = _materialize_bulk(store, start_date, end_date, views)
        if rest is None or rest:
            store.materialize(start_date=start_date, end_date=end_date, feature_views=rest)
    rows: dict[str, int] = {}
    for view in store.list_feature_views():
        if views is not None and view.name not in views:
            continue
        entity = next(e for e, name in VIEW_NAMES.items() if name == view.name)
        path = feature_tables / table_file(entity)
        rows[view.name] = (
            pl.scan_parquet(path)
            .filter(pl.col(EVENT_TIMESTAMP) == newest)
            .select(pl.len())
            .collect()
            .item()
        )
    return MaterializeSummary(
        project=store.project,
        snapshot=newest,
        rows=rows,
        seconds=round(time.perf_counter() - started, 3),
    )


# --- bulk materialization ------------------------------------------------------------
#
# Feast's ``materialize`` spends its time in Python per value: it builds one
# ValueProto per cell, then the SQLite store upserts row by row and the Redis store
# serializes every proto and hashes every field name once per entity. The bulk path
# below writes the *same bytes* to the *same tables / hashes* (tests compare them
# with Feast's own output): it reads the window Feast would read, keeps the newest
# row per entity (Feast's ``pull_latest_from_table_or_query``), converts each
# column's *distinct* values with Feast's ``python_values_to_proto_values`` and
# ``SerializeToString``, serializes entity keys with Feast's
# ``serialize_entity_key``, and hands large batches to the store's own connection:
# SQLite ``executemany`` of Feast's upsert statement; Redis pipelined ``HSET`` after
# Feast's newest-event-timestamp-wins check (pipelined ``HMGET`` of ``_ts:<view>``,
# skipped exactly when Feast skips it: ``skip_dedup``).

#: Entities per batch written to the online store (bounds memory; one transaction
#: or pipeline per batch).
MATERIALIZE_BATCH = 20_000
#: Feast value types whose distinct values can be converted once and reused.
_SCALAR_VALUE_TYPES = frozenset({"INT32", "INT64", "FLOAT", "DOUBLE", "STRING", "BOOL"})


def _materialize_bulk(
    store: FeatureStore, start_date: datetime, end_date: datetime, views: list[str] | None
) -> list[str]:
    """Materialize what the bulk path supports; return the view names left for Feast."""
    from feast import utils as feast_utils

    writer = _bulk_writer(store)
    registered = {v.name: v for v in store.list_feature_views() if v.online}
    names = list(registered) if views is None else list(views)
    rest: list[str] = []
    for name in names:
        view = registered.get(name)
        if writer is None or view is None or not _bulk_supported(view):
            rest.append(name)
            continue
        frame = _latest_rows(view, start_date, end_date)
        for offset in range(0, frame.num_rows, MATERIALIZE_BATCH):
            writer(store, view, _encode_batch(store, view, frame.slice(offset, MATERIALIZE_BATCH)))
        # What Feast's materialize records after writing a view.
        store.registry.apply_materialization(
            view, store.project, feast_utils.make_tzaware(start_date), feast_utils.make_tzaware(end_date)
        )
    return rest


def _bulk_writer(store: FeatureStore) -> Any:
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    config = store.config
    if config.registry.enable_online_feature_view_versioning:
        return None
    online = store._get_provider().online_store
    if type(online) is SqliteOnlineStore:
        oc = config.online_store
        if oc.vector_enabled or getattr(oc, "enable_openai_compatible_store", False):
            return None
        return _write_sqlite
    if type(online) is RedisOnlineStore and config.online_store.client == "redis":
        return _write_redis
    return None


def _bulk_supported(view: Any) -> bool:
    from feast import FileSource

    source = view.batch_source
    return (
        isinstance(source, FileSource)
        and not source.field_mapping
        and not source.created_timestamp_column
        and len(view.entity_columns) == 1
        and all(f.dtype.to_value_type().name in _SCALAR_VALUE_TYPES for f in view.features)
    )


def _latest_rows(view: Any, start_date: datetime, end_date: datetime) -> Any:
    """The newest row per entity with ``start_date <= event time <= end_date``, as an
    Arrow table (Feast's file offline store: inclusive window, keep the last row
    per join key after sorting by event time)."""
    import polars as pl
    from feast import utils as feast_utils

    key = view.entity_columns[0].name
    ts = view.batch_source.timestamp_field
    columns = [key, ts, *(f.name for f in view.features)]
    start, end = feast_utils.make_tzaware(start_date), feast_utils.make_tzaware(end_date)
    frame = pl.scan_parquet(view.batch_source.path).select(columns)
    stamp = pl.col(ts)
    if frame.collect_schema()[ts].time_zone is None:  # naive stamps are UTC to Feast
        stamp = stamp.dt.replace_time_zone("UTC")
    return (
        frame.filter(stamp.is_between(start, end, closed="both"))
        .sort(ts, maintain_order=True)
        .unique(subset=[key], keep="last", maintain_order=True)
        .collect()
        .to_arrow()
    )


def _serialized_column(values: Any, value_type: Any, text: bool) -> tuple[list[bytes], list[Any] | None]:
    """Feast's serialized ValueProto (and SQLite ``value_text``) per value of a column,
    converting each distinct value once with Feast's own helpers."""
    import numpy as np
    import pandas as pd
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    if values.dtype.kind == "f":  # by bit pattern: keeps -0.0 and NaN payloads apart
        codes, bits = pd.factorize(values.view(np.int64))
        uniques: list[Any] = list(bits.view(values.dtype))
        na: list[Any] = []
    else:
        codes, found = pd.factorize(values, use_na_sentinel=True)
        uniques = list(found)
        missing = codes < 0
        na = []
        if missing.any():
            # Missing values of each Python type (None, NaN, ...) convert alike.
            kinds: dict[type, int] = {}
            for v in values[missing]:
                kinds.setdefault(type(v), len(uniques) + len(na))
                if len(na) < len(kinds):
                    na.append(v)
            codes = codes.copy()
            codes[missing] = [kinds[type(v)] for v in values[missing]]
    if values.dtype.kind == "f" and value_type.name in ("DOUBLE", "FLOAT"):
        # Feast's generic scalar branch (``_convert_scalar_values_to_proto``) for a
        # float array: NaN -> an empty ValueProto, else ``Value(<field>=func(v))``
        # from Feast's own table; the null test is vectorized, the values are
        # typically all distinct (measurements), so this skips its per-value isnull.
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from feast.type_map import PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE

        field, func, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        floats = np.asarray(uniques, dtype=values.dtype)
        null = np.isnan(floats)
        # One message, reassigned: the same bytes as a new Value per value, 3x faster.
        proto, empty = ValueProto(), ValueProto().SerializeToString()
        serialize = proto.SerializeToString
        blobs, strings = [], []
        for v, nan in zip(floats.tolist(), null.tolist(), strict=True):
            if nan:
                blobs.append(empty)
                strings.append(None)
            else:
                setattr(proto, field, func(v))
                blobs.append(serialize())
                # extract_text_and_num: str() of the value as the proto holds it.
                strings.append(str(getattr(proto, field)) if text else None)
    else:
        protos = python_values_to_proto_values(uniques + na, value_type) if uniques or na else []
        blobs = [p.SerializeToString() for p in protos]
        strings = [extract_text_and_num(p, False)[0] for p in protos] if text else []
    lookup = np.empty(len(blobs), dtype=object)
    lookup[:] = blobs
    serialized = lookup[codes].tolist()
    if not text:
        return serialized, None
    texts = np.empty(len(strings), dtype=object)
    texts[:] = strings
    return serialized, texts[codes].tolist()


@dataclass
class _Batch:
    entity_keys: list[bytes]  # Feast's serialize_entity_key
    features: list[str]
    values: list[list[bytes]]  # per feature, per entity
    texts: list[list[Any]] | None  # SQLite value_text, per feature, per entity
    timestamps: list[datetime]  # per entity, as Feast's converter returns them


def _encode_batch(store: FeatureStore, view: Any, table: Any) -> _Batch:
    import numpy as np
    import pandas as pd
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.sqlite import SqliteOnlineStore
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.type_map import python_values_to_proto_values
    from feast.utils import _coerce_datetime

    text = isinstance(store._get_provider().online_store, SqliteOnlineStore)
    version = store.config.entity_key_serialization_version
    key = view.entity_columns[0]
    key_protos = python_values_to_proto_values(
        table.column(key.name).to_numpy(zero_copy_only=False), key.dtype.to_value_type()
    )
    entity_keys = [
        serialize_entity_key(EntityKeyProto(join_keys=[key.name], entity_values=[p]), version)
        for p in key_protos
    ]
    values, texts = [], []
    for feature in view.features:
        column = table.column(feature.name).to_numpy(zero_copy_only=False)
        ser, txt = _serialized_column(column, feature.dtype.to_value_type(), text)
        values.append(ser)
        texts.append(txt)
    # Event times exactly as Feast's _convert_arrow_fv_to_proto builds them.
    raw = table.column(view.batch_source.timestamp_field).to_numpy(zero_copy_only=False)
    codes, uniques = pd.factorize(raw)
    converted = np.empty(len(uniques), dtype=object)
    converted[:] = [_coerce_datetime(v) for v in pd.to_datetime(uniques)]
    return _Batch(
        entity_keys=entity_keys,
        features=[f.name for f in view.features],
        values=values,
        texts=texts if text else None,
        timestamps=converted[codes].tolist(),
    )


def _write_sqlite(store: FeatureStore, view: Any, batch: _Batch) -> None:
    """Feast's SQLite upsert (``SqliteOnlineStore.online_write_batch``), as one
    ``executemany`` per batch on the store's own connection."""
    import sqlite3
    from itertools import repeat

    from feast.infra.online_stores.sqlite import _quote_id, _table_id
    from feast.utils import to_naive_utc

    config = store.config
    conn = store._get_provider().online_store._get_conn(config)
    table = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    sql = (
        f"INSERT INTO {_quote_id(table)} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
        "VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
        "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts;"
    )
    # The value sqlite3 stores for each event time: Feast's registered adapter (if
    # any) applied once per distinct time instead of once per row.
    adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
    naive: dict[int, Any] = {}
    for t in batch.timestamps:
        if id(t) not in naive:
            naive[id(t)] = adapt(to_naive_utc(t)) if adapt else to_naive_utc(t)
    stamps = [naive[id(t)] for t in batch.timestamps]
    assert batch.texts is not None
    # Entity by entity, features in view order: the order Feast writes in.
    n, width = len(batch.entity_keys), len(batch.features)
    keys = [k for k in batch.entity_keys for _ in range(width)]
    names = batch.features * n
    vals = [v for row in zip(*batch.values, strict=True) for v in row]
    texts = [t for row in zip(*batch.texts, strict=True) for t in row]
    ts = [t for t in stamps for _ in range(width)]
    with conn:
        conn.executemany(sql, zip(keys, names, vals, texts, ts, repeat(None)))


def _write_redis(store: FeatureStore, view: Any, batch: _Batch) -> None:
    """Feast's Redis write (``RedisOnlineStore.online_write_batch``) with the same
    keys, fields and values, and the same rule: a row is written only if its event
    time is newer than the one stored (unless ``skip_dedup``)."""
    from feast import utils as feast_utils
    from feast.infra.online_stores.helpers import _mmh3
    from feast.infra.online_stores.redis import _versioned_fv_name
    from google.protobuf.timestamp_pb2 import Timestamp

    config = store.config
    oc = config.online_store
    client = store._get_provider().online_store._get_client(oc)
    fv_name = _versioned_fv_name(view, config)
    ts_key = f"_ts:{fv_name}"
    fields = [_mmh3(f"{fv_name}:{f}") for f in batch.features]
    project = config.project.encode("utf-8")
    keys = [k + project for k in batch.entity_keys]

    def nanos(ts: Timestamp) -> int:
        return ts.seconds * 1_000_000_000 + ts.nanos

    new: dict[int, tuple[bytes, int]] = {}
    for t in batch.timestamps:
        if id(t) not in new:
            proto = Timestamp()
            proto.FromDatetime(feast_utils.make_tzaware(t))
            new[id(t)] = (proto.SerializeToString(), nanos(proto))
    stamps = [new[id(t)] for t in batch.timestamps]
    keep = [True] * len(keys)
    if not oc.skip_dedup:
        with client.pipeline(transaction=False) as pipe:
            command = pipe.execute_command  # pipe.hmget(k, ts_key), minus its wrapper
            for k in keys:
                command("HMGET", k, ts_key)
            previous = [r[0] for r in pipe.execute()]
        parsed: dict[bytes, int] = {}
        for i, prev in enumerate(previous):
            if not prev:
                continue
            if prev not in parsed:
                proto = Timestamp()
                proto.ParseFromString(prev)
                parsed[prev] = nanos(proto)
            seen = parsed[prev]
            keep[i] = not (seen and stamps[i][1] <= seen)
    with client.pipeline(transaction=False) as pipe:
        # pipe.hset(k, mapping={ts_key: ts, field: value, ...}) sends exactly
        # HSET k ts_key ts field value ...; the arguments are built flat here.
        command = pipe.execute_command
        for k, (ts_bytes, _), row, ok in zip(keys, stamps, zip(*batch.values, strict=True), keep, strict=True):
            if not ok:
                continue
            args = [None] * (2 * len(fields))
            args[0::2] = fields
            args[1::2] = row
            command("HSET", k, ts_key, ts_bytes, *args)
            if oc.key_ttl_seconds:
                pipe.expire(name=k, time=oc.key_ttl_seconds)
        pipe.execute()
