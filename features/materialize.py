"""Materialize: load each entity's latest snapshot into the online store.

``materialize_latest`` writes, per feature view, what Feast's
``FeatureStore.materialize`` over ``[newest snapshot - TTL, newest snapshot]``
would write. For the online stores it has been checked against (SQLite, Redis) it
writes the *same bytes* in bulk (tests compare them with Feast's own output);
anything else goes through Feast.

Feast's ``materialize`` spends its time in Python per value: it builds one
ValueProto per cell, then the SQLite store upserts row by row and the Redis store
serializes every proto and hashes every field name once per entity. The bulk path
reads the window Feast would read, keeps the newest row per entity (Feast's
``pull_latest_from_table_or_query``), encodes the rows with ``features.codec``
(doubles and string keys laid out directly, other values through Feast's
converters once per distinct value) and hands large batches to the store's own
connection: SQLite, Feast's upsert as multi-row statements in primary-key order;
Redis, ``HSET``s packed column by column after Feast's newest-event-time-wins
check (the stored ``_ts:<view>`` read by a script call per 5,000 keys, skipped
exactly when Feast skips it: ``skip_dedup``). ``write_online`` writes a pushed
table (scores) the same way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from features.build import read_build_summary
from features.catalog import EVENT_TIMESTAMP, FEATURES, VIEW_NAMES, VIEW_TTL, table_file
from features.codec import SCALAR_VALUE_TYPES, EncodedRows, encode_rows

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from feast import FeatureStore

#: Entities per batch written to the online store (bounds memory; one transaction
#: or pipeline per batch).
MATERIALIZE_BATCH = 20_000

#: Writes encoded rows of a view to the store's online store, as Feast would.
Writer = Callable[["FeatureStore", Any, EncodedRows], None]


class MaterializeSummary(BaseModel):
    """What ``materialize_latest`` loaded: the snapshot and its row count per view."""

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
    tables = {VIEW_NAMES[t]: feature_tables / table_file(t) for t in FEATURES}
    views = list(VIEW_NAMES.values()) if views is None else views
    missing = [v for v in views if v in tables and not tables[v].exists()]
    if missing:
        # Tables built before a view existed (e.g. customer_value): the rest still loads.
        log.warning("no feature table for %s: not materialized (rebuild with `crmscore features build`)",
                    ", ".join(missing))
        views = [v for v in views if v not in missing]
    start_date, end_date = newest - VIEW_TTL, newest + timedelta(seconds=1)
    started = time.perf_counter()
    # Feast prints progress bars to stdout; the summary below says what happened.
    with contextlib.redirect_stdout(io.StringIO()):
        rest = _materialize_bulk(store, start_date, end_date, views) if fast else views
        if rest:
            store.materialize(start_date=start_date, end_date=end_date, feature_views=rest)
    rows: dict[str, int] = {}
    for view in store.list_feature_views():
        if view.name not in views:
            continue
        path = tables[view.name]
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


def _materialize_bulk(
    store: FeatureStore, start_date: datetime, end_date: datetime, views: list[str]
) -> list[str]:
    """Materialize what the bulk path supports; return the view names left for Feast."""
    from feast import utils as feast_utils

    writer = _bulk_writer(store)
    text = writer is _write_sqlite  # SQLite stores a value_text beside each value
    registered = {v.name: v for v in store.list_feature_views() if v.online}
    rest: list[str] = []
    for name in views:
        view = registered.get(name)
        if writer is None or view is None or not _bulk_supported(view):
            rest.append(name)
            continue
        _write_table(store, writer, view, _latest_rows(view, start_date, end_date), text=text)
        # What Feast's materialize records after writing a view.
        store.registry.apply_materialization(
            view, store.project, feast_utils.make_tzaware(start_date), feast_utils.make_tzaware(end_date)
        )
    return rest


def write_online(store: FeatureStore, view_name: str, table: Any) -> bool:
    """Write an Arrow table of a view's rows (its join key, its source's timestamp
    field, its features) to the online store as Feast's ``write_to_online_store``
    (what ``FeatureStore.push`` to the online store calls) would: the same bytes,
    through the bulk writer. Returns False, having written nothing, where only Feast
    can write it (another store, a view of several join keys or non-scalar types)."""
    from feast import FeatureView

    writer = _bulk_writer(store)
    view = store.get_feature_view(view_name)
    if writer is None or not isinstance(view, FeatureView) or not _scalar_view(view):
        return False
    source = view.batch_source
    if source is None or source.field_mapping:
        return False
    key = view.entity_columns[0].name
    table = table.select([key, source.timestamp_field, *(f.name for f in view.features)])
    if all(table.column(f.name).null_count == table.num_rows for f in view.features):
        # Feast writes nothing when every feature is null (it warns; so do we).
        log.warning("%s: every feature is null, nothing written to the online store", view_name)
        return True
    _write_table(store, writer, view, table, text=writer is _write_sqlite)
    return True


def _write_table(store: FeatureStore, writer: Writer, view: Any, table: Any, *, text: bool) -> None:
    """Encode and write a view's rows (one per entity), ``MATERIALIZE_BATCH`` at a time;
    ``text``: SQLite's value_text too, and the rows in key order. (Encoding the next
    batch in a thread while this one is written saved 3-7 %, within noise: not kept.)"""
    if text:
        table = _in_key_order(table, view.entity_columns[0].name)
    version = store.config.entity_key_serialization_version
    for offset in range(0, table.num_rows, MATERIALIZE_BATCH):
        writer(store, view, encode_rows(view, table.slice(offset, MATERIALIZE_BATCH), version=version, text=text))


def _bulk_writer(store: FeatureStore) -> Writer | None:
    """The bulk writer for the store's online store, or None where Feast must write."""
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
    """A view the bulk path materializes exactly as Feast does: a plain ``FileSource``
    and ``_scalar_view``."""
    from feast import FileSource

    source = view.batch_source
    return (
        isinstance(source, FileSource)
        and not source.field_mapping
        and not source.created_timestamp_column
        and _scalar_view(view)
    )


def _scalar_view(view: Any) -> bool:
    """One join key and scalar feature types (``features.codec.SCALAR_VALUE_TYPES``)."""
    return len(view.entity_columns) == 1 and all(
        f.dtype.to_value_type().name in SCALAR_VALUE_TYPES for f in view.features
    )


def _latest_rows(view: Any, start_date: datetime, end_date: datetime) -> Any:
    """The newest row per entity with ``start_date <= event time <= end_date``, as an
    Arrow table: what Feast's offline store (DuckDB, ``pull_latest_from_table_or_query``)
    hands to ``materialize``: an inclusive window, the newest row per join key."""
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


#: Rows per SQLite INSERT statement (whole entities, at least one): a multi-row VALUES
#: statement is bound and stepped once instead of once per row, ~40% less CPU per row
#: than Feast's one-row statement (measured on 500k rows; the bench's raw write uses
#: the same statement shape, so the ratio compares like with like).
SQLITE_ROWS_PER_STATEMENT = 100
#: SQLite's limit of bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER, 3.32+).
SQLITE_MAX_PARAMETERS = 32_766
#: The columns Feast's SQLite store writes (no vector or value_num column: ``_bulk_writer``).
SQLITE_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")


def sqlite_insert(table: str, rows: int, *, upsert: bool) -> str:
    """An INSERT of ``rows`` rows of ``SQLITE_COLUMNS`` into ``table`` (a quoted name);
    ``upsert``: Feast's ON CONFLICT clause (``SqliteOnlineStore.online_write_batch``)."""
    placeholders = ", ".join(["(" + ", ".join("?" * len(SQLITE_COLUMNS)) + ")"] * rows)
    sql = f"INSERT INTO {table} ({', '.join(SQLITE_COLUMNS)}) VALUES {placeholders}"
    if upsert:
        sql += (
            " ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
            "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )
    return sql


def _object_column(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _in_key_order(frame: Any, key: str) -> Any:
    """The rows in the order of their serialized string keys (``codec._string_keys``:
    byte length, then bytes), so SQLite appends to its primary-key index instead of
    inserting all over a B-tree larger than its page cache. Other key types: as is."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = frame.schema.field(key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return frame
    column = frame.column(key)
    indices = pc.sort_indices(
        pa.table({"n": pc.binary_length(column), "k": pc.cast(column, pa.binary())}),
        sort_keys=[("n", "ascending"), ("k", "ascending")],
    )
    return frame.take(indices)


def _write_sqlite(store: FeatureStore, view: Any, batch: EncodedRows) -> None:
    """Feast's SQLite upsert (``SqliteOnlineStore.online_write_batch``): the same rows,
    entity by entity (features by name, where Feast goes in view order: the table's
    row order means nothing to a reader), as multi-row statements in one transaction
    per batch on the store's own connection."""
    import sqlite3

    from feast.infra.online_stores.sqlite import _quote_id, _table_id
    from feast.utils import to_naive_utc

    config = store.config
    conn = store._get_provider().online_store._get_conn(config)
    table = _quote_id(_table_id(config.project, view, config.registry.enable_online_feature_view_versioning))
    # The value sqlite3 stores for each event time: Feast's registered adapter (if
    # any) applied once per distinct time instead of once per row.
    adapt = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
    naive: dict[int, Any] = {}
    for t in batch.timestamps:
        if id(t) not in naive:
            naive[id(t)] = adapt(to_naive_utc(t)) if adapt else to_naive_utc(t)
    assert batch.texts is not None
    n, width = len(batch.entity_keys), len(batch.features)
    if not n:
        return
    # One row per (entity, feature), built column by column in C (numpy object arrays),
    # not value by value in Python.
    # Features by name: an entity's rows in primary-key order too.
    order = sorted(range(width), key=batch.features.__getitem__)
    cells = np.empty((n, width, len(SQLITE_COLUMNS)), dtype=object)
    cells[:, :, 0] = _object_column(batch.entity_keys)[:, None]
    cells[:, :, 1] = _object_column([batch.features[j] for j in order])[None, :]
    for i, j in enumerate(order):
        cells[:, i, 2] = batch.values[j]
        cells[:, i, 3] = batch.texts[j]
    cells[:, :, 4] = _object_column([naive[id(t)] for t in batch.timestamps])[:, None]
    cells[:, :, 5] = None
    per = max(1, min(SQLITE_ROWS_PER_STATEMENT // width, SQLITE_MAX_PARAMETERS // (width * len(SQLITE_COLUMNS))))
    flat = cells.reshape(n, -1)
    whole = n - n % per
    with conn:
        if whole:
            conn.executemany(sqlite_insert(table, per * width, upsert=True), flat[:whole].reshape(whole // per, -1).tolist())
        if whole < n:
            conn.execute(sqlite_insert(table, (n - whole) * width, upsert=True), flat[whole:].ravel().tolist())


#: Newest-event-time-wins needs each entity's stored ``_ts:<view>``: one script call
#: reads it for many keys (``HGET`` per key server-side), where a pipelined ``HMGET``
#: per key costs a command, a reply and their Python on each side.
_READ_STAMPS = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, ARGV[1]) end
return out
"""
#: Keys per ``_READ_STAMPS`` call.
STAMP_READ_CHUNK = 5_000


def _write_redis(store: FeatureStore, view: Any, batch: EncodedRows) -> None:
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
    ts_key = f"_ts:{fv_name}".encode()
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
        read = client.register_script(_READ_STAMPS)
        stored: list[bytes | None] = []
        for i in range(0, len(keys), STAMP_READ_CHUNK):
            stored += read(keys=keys[i : i + STAMP_READ_CHUNK], args=[ts_key])
        parsed: dict[bytes, int] = {}
        same: list[int] = []  # entities stored with this very event time
        for i, prev in enumerate(stored):
            if not prev:
                continue
            if prev not in parsed:
                proto = Timestamp()
                proto.ParseFromString(prev)
                parsed[prev] = nanos(proto)
            seen = parsed[prev]
            if seen and stamps[i][1] < seen:
                keep[i] = False  # Feast's rule: the newest event time wins
            elif seen and stamps[i][1] == seen:
                same.append(i)
        if same:
            # A stored row of the same time is kept (Feast), unless fields are missing:
            # materialize repairs partial rows (a partial row is never "already written").
            with client.pipeline(transaction=False) as pipe:
                for i in same:
                    pipe.execute_command("HMGET", keys[i], *fields)
                replies = pipe.execute()
            for i, reply in zip(same, replies, strict=True):
                keep[i] = not all(v is not None for v in reply)
    # HSET key _ts:<view> ts field value ...: what pipe.hset(k, mapping=...) sends.
    rows = np.flatnonzero(keep)
    whole = len(rows) == len(keys)
    columns = [_object_column([stamps[i][0] for i in rows]), *(c if whole else c[rows] for c in batch.values)]
    kept = _object_column(keys) if whole else _object_column(keys)[rows]
    if oc.key_ttl_seconds:
        names = [ts_key, *fields]
        with client.pipeline(transaction=False) as pipe:
            for k, *values in zip(kept.tolist(), *(c.tolist() for c in columns), strict=True):
                pipe.execute_command("HSET", k, *(x for pair in zip(names, values, strict=True) for x in pair))
                pipe.expire(name=k, time=oc.key_ttl_seconds)
            pipe.execute()
    else:
        send_hsets(client, kept, [ts_key, *fields], columns)


#: HSET commands per write to the socket (a few MB): the replies of one chunk are read
#: before the next is sent.
HSET_CHUNK = 5_000


def send_hsets(client: Any, keys: np.ndarray, fields: list[bytes], columns: list[np.ndarray]) -> None:
    """``HSET keys[i] fields[0] columns[0][i] fields[1] columns[1][i] ...`` for every
    row, pipelined on one of ``client``'s connections: the commands a redis-py pipeline
    would send, with the RESP bytes laid out column by column (``_pack_hsets``) instead
    of command by command, which is most of a pipeline's client-side time for wide
    hashes. Raises on an error reply."""
    import redis

    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        for start in range(0, len(keys), HSET_CHUNK):
            stop = min(start + HSET_CHUNK, len(keys))
            conn.send_packed_command([_pack_hsets(keys[start:stop], fields, [c[start:stop] for c in columns])])
            errors = []
            for _ in range(stop - start):
                try:
                    conn.read_response()
                except redis.ResponseError as exc:  # read them all: the connection stays in sync
                    errors.append(exc)
            if errors:
                raise errors[0]
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
    finally:
        pool.release(conn)


def _pack_hsets(keys: np.ndarray, fields: list[bytes], columns: list[np.ndarray]) -> bytes:
    """The RESP request of ``HSET key field value ...`` per row (all bytes): each
    argument is ``$<len>\\r\\n<bytes>\\r\\n``. A field name and the header of its
    value make one piece, looked up in a table by the value's length, so a row is
    two pieces per field and no Python runs per value."""
    n = len(keys)
    parts = np.empty((n, 4 + 2 * len(fields)), dtype=object)
    parts[:, 0] = b"*%d\r\n$4\r\nHSET" % (2 + 2 * len(fields))
    for j, (field, column) in enumerate([(b"", keys), *zip(fields, columns, strict=True)]):
        # Each piece starts with the \r\n that ends the previous argument.
        name = b"\r\n$%d\r\n%s" % (len(field), field) if j else b""
        lengths = np.fromiter(map(len, column), dtype=np.int64, count=n)
        top = int(lengths.max()) if n else 0
        headers = np.array([name + b"\r\n$%d\r\n" % size for size in range(top + 1)], dtype=object)
        parts[:, 1 + 2 * j] = headers[lengths]
        parts[:, 2 + 2 * j] = column
    parts[:, -1] = b"\r\n"
    return b"".join(parts.ravel().tolist())
