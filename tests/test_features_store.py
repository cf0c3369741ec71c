"""The Feast repository on the embedded profile: apply, types, materialize,
online = offline, freshness, training frames, and Feast's own CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from features.catalog import (
    EVENT_TIMESTAMP,
    FEATURES,
    PEER_FEATURES,
    VALUE_TABLE,
    VIEW_NAMES,
    VIEW_TTL,
    table_file,
)
from features.online import read_online
from features.store import (
    Profile,
    StoreSettings,
    config_dict,
    redis_connection_string,
    repository_objects,
)
from features.training import service_features, training_frame
from tests.conftest import FeatureWorkspace
from tests.factories import online_frame

FEATURES_DIR = Path(__file__).resolve().parent.parent / "features"
FEAST_TYPES = {"str": "String", "int": "Int64", "float": "Float64"}


def latest_offline(fw: FeatureWorkspace, entity: str) -> pd.DataFrame:
    frame = pl.read_parquet(fw.ws.feature_tables / table_file(entity))
    return frame.filter(pl.col(EVENT_TIMESTAMP) == frame[EVENT_TIMESTAMP].max()).to_pandas()


def test_services_and_types_are_registered(feature_workspace: FeatureWorkspace) -> None:
    store = feature_workspace.store
    services = {s.name for s in store.list_feature_services()}
    assert services == {"churn_v1", "lead_scoring_v1", "next_best_product_v1", "customer_value"}
    for entity, specs in FEATURES.items():
        view = store.get_feature_view(VIEW_NAMES[entity])
        types = {f.name: str(f.dtype) for f in view.features}
        for spec in specs:
            assert types[spec.name] == FEAST_TYPES[spec.kind], spec.name
        assert view.ttl == VIEW_TTL
    customer = {f.name: str(f.dtype) for f in store.get_feature_view("customer_features").features}
    assert customer["attr_tier"] == "String" and customer["attr_credit"] == "Float64"
    churn = service_features(store.get_feature_service("churn_v1"))
    assert "attr_tier" in churn and "orders_30d" in churn
    assert set(PEER_FEATURES) <= set(churn) and "rfm_segment" not in churn
    value = store.get_feature_service("customer_value")
    assert [p.name for p in value.feature_view_projections] == ["customer_features", "customer_value"]
    lead = service_features(store.get_feature_service("lead_scoring_v1"))
    assert "attr_score" in lead
    assert {"lead_status", "lead_closed_at"} <= set(lead)  # one online read: features and status
    nbp = store.get_feature_service("next_best_product_v1")
    assert [p.name for p in nbp.feature_view_projections] == ["customer_features", "product_features"]


def test_repository_objects_are_retargeted_copies(tmp_path: Path) -> None:
    from features import data_sources

    before = data_sources.customer_source.path
    objects = repository_objects(tmp_path)
    # Score sources (tags table=scores) point at the workspace's score tables instead.
    paths = sorted(
        o.path for o in objects if type(o).__name__ == "FileSource" and o.tags.get("table") != "scores"
    )
    assert paths == sorted(str(tmp_path / table_file(e)) for e in ("customer", "lead", "product", VALUE_TABLE))
    views = [o for o in objects if type(o).__name__ == "FeatureView"]
    assert all(
        v.batch_source.path.startswith(str(tmp_path)) for v in views if v.batch_source.tags.get("table") != "scores"
    )
    assert data_sources.customer_source.path == before


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "sdk"])
def test_online_equals_latest_offline(feature_workspace: FeatureWorkspace, fast: bool) -> None:
    fw = feature_workspace
    for service, entity in (("churn_v1", "customer"), ("lead_scoring_v1", "lead"), ("customer_value", "customer")):
        offline = latest_offline(fw, entity)
        key = offline.columns[0]
        if entity == "customer":  # churn and customer value also read the value view
            offline = offline.merge(latest_offline(fw, VALUE_TABLE).drop(columns=[EVENT_TIMESTAMP]), on=key)
        ids = sorted(offline[key])
        result = read_online(fw.store, service, ids, fast=fast)
        online = online_frame(result).set_index(key)
        offline = offline.set_index(key).loc[ids]
        for column in service_features(fw.store.get_feature_service(service)):
            for i in ids:
                a, b = online.at[i, column], offline.at[i, column]
                assert (pd.isna(a) and pd.isna(b)) or a == b, (service, i, column, a, b)


def test_fast_and_sdk_reads_agree(feature_workspace: FeatureWorkspace) -> None:
    store = feature_workspace.store
    rows = {"customer_id": ["C1", "C1", "C2", "nobody"], "product_id": ["P1", "P2", "P9", "P1"]}
    now = datetime.now(UTC)
    fast = read_online(store, "next_best_product_v1", rows, now=now)
    sdk = read_online(store, "next_best_product_v1", rows, now=now, fast=False)
    pd.testing.assert_frame_equal(online_frame(fast), online_frame(sdk)[online_frame(fast).columns], check_dtype=False)
    assert fast.freshness == sdk.freshness
    assert online_frame(fast).loc[1, "product_category"] == "consumables"


def test_freshness_reports_age_and_staleness(feature_workspace: FeatureWorkspace) -> None:
    store, newest = feature_workspace.store, max(feature_workspace.as_of)
    fresh = read_online(store, "churn_v1", ["C1", "nobody"], now=newest + timedelta(days=1))
    view = fresh.freshness["customer_features"]
    assert view.event_timestamp[0] == newest
    assert view.age_seconds[0] == 86400.0
    assert view.ttl_seconds == VIEW_TTL.total_seconds()
    assert view.stale == [False, True]  # an entity with no row counts as stale
    assert view.found == [True, False]
    assert fresh.stale == [False, True]
    old = read_online(store, "churn_v1", ["C1"], now=newest + VIEW_TTL + timedelta(seconds=1))
    assert old.stale == [True]
    assert old.max_age_seconds[0] == (VIEW_TTL + timedelta(seconds=1)).total_seconds()


def test_online_read_errors(feature_workspace: FeatureWorkspace) -> None:
    with pytest.raises(CrmscoreError, match="not registered"):
        read_online(feature_workspace.store, "churn_v9", ["C1"])
    with pytest.raises(CrmscoreError, match="mapping"):
        read_online(feature_workspace.store, "next_best_product_v1", ["C1"])


def test_training_frame_is_point_in_time(feature_workspace: FeatureWorkspace) -> None:
    store, grid = feature_workspace.store, feature_workspace.as_of
    snap = datetime(2023, 6, 1, tzinfo=UTC)  # a snapshot of the fixture's grid
    labels = pd.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2", "C1", "C1"],
            EVENT_TIMESTAMP: [
                snap + timedelta(days=3),  # between snapshots: the 2023-06-01 one
                snap + timedelta(days=3),  # duplicate rows are kept
                snap,  # exactly at a snapshot: that snapshot
                datetime(2023, 3, 1, tzinfo=UTC) + VIEW_TTL + timedelta(days=30),  # older than TTL
                max(grid),
            ],
            "label": [1, 1, 0, 0, 1],
        }
    )
    frame = training_frame(store, "churn_v1", pl.from_pandas(labels))
    assert list(frame.columns[:3]) == ["customer_id", EVENT_TIMESTAMP, "label"]
    assert frame["label"].tolist() == [1, 1, 0, 0, 1]
    offline = pl.read_parquet(feature_workspace.ws.feature_tables / table_file("customer"))

    def at(cid: str, when: datetime) -> dict:
        return offline.filter((pl.col("customer_id") == cid) & (pl.col(EVENT_TIMESTAMP) == when)).to_dicts()[0]

    assert frame.loc[0, "tenure_days"] == at("C1", snap)["tenure_days"]
    assert frame.loc[2, "orders_total"] == at("C2", snap)["orders_total"]
    assert pd.isna(frame.loc[3, "orders_total"])  # no snapshot within the TTL
    assert frame.loc[4, "attr_tier"] == "gold"


def test_training_frame_errors(feature_workspace: FeatureWorkspace) -> None:
    with pytest.raises(CrmscoreError, match="lack columns: customer_id"):
        training_frame(feature_workspace.store, "churn_v1", pd.DataFrame({EVENT_TIMESTAMP: []}))
    with pytest.raises(CrmscoreError, match="not registered"):
        training_frame(feature_workspace.store, "nope_v1", pd.DataFrame())


def test_profiles() -> None:
    timeouts = "socket_connect_timeout=1,socket_timeout=2"
    assert redis_connection_string("redis://127.0.0.1:6379/0") == f"127.0.0.1:6379,db=0,{timeouts}"
    assert redis_connection_string("rediss://:s3cret@cache:6380/2") == f"cache:6380,db=2,password=s3cret,ssl=true,{timeouts}"
    assert redis_connection_string("redis://cache/1?socket_timeout=0.5").endswith("socket_connect_timeout=1,socket_timeout=0.5")
    for bad in ("redis://cache/0?timeout=1", "redis://cache/0?socket_timeout=soon", "redis://cache/0?socket_timeout=0"):
        with pytest.raises(CrmscoreError, match="CRMSCORE_REDIS_URL"):
            redis_connection_string(bad)
    with pytest.raises(CrmscoreError):
        redis_connection_string("http://x")
    from crmdata.workspace import Workspace

    ws = Workspace(Path("/w"))
    local = config_dict(ws, StoreSettings())
    assert local["online_store"] == {"type": "sqlite", "path": "/w/feast/online_store.db"}
    assert local["registry"]["path"] == "/w/feast/registry.db"
    prod = config_dict(ws, StoreSettings(profile=Profile.REDIS, redis_url="redis://h:1/3", registry_url="postgresql+psycopg://u@h/db"))
    assert prod["online_store"] == {"type": "redis", "connection_string": f"h:1,db=3,{timeouts}"}
    assert prod["registry"]["registry_type"] == "sql"


def test_static_feature_store_yaml_is_the_embedded_profile() -> None:
    from feast.repo_config import load_repo_config

    config = load_repo_config(FEATURES_DIR, FEATURES_DIR / "feature_store.yaml")
    assert config.online_store.type == "sqlite"
    assert config.registry.registry_type == "file"
    assert config.offline_store.type == "duckdb"
    assert (FEATURES_DIR / config.registry.path).resolve() == (FEATURES_DIR.parent / "data/feast/registry.db").resolve()


@pytest.mark.slow
def test_feast_cli_applies_the_repository(feature_workspace: FeatureWorkspace) -> None:
    """`feast apply` from features/ (Feast imports the definition modules itself)."""
    fw = feature_workspace
    from features.store import write_feature_store_yaml

    config = write_feature_store_yaml(fw.ws, StoreSettings())
    env = {**os.environ, "CRMSCORE_HOME": str(fw.ws.home)}
    feast = Path(sys.executable).parent / "feast"
    done = subprocess.run(
        [str(feast), "-f", str(config), "apply"], check=False, cwd=FEATURES_DIR, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    fw.store.refresh_registry()
    services = {s.name for s in fw.store.list_feature_services()}
    assert services == {"churn_v1", "lead_scoring_v1", "next_best_product_v1", "customer_value"}
    assert read_online(fw.store, "churn_v1", ["C1"]).freshness["customer_features"].found == [True]


# --- bulk materialize = Feast's materialize, byte for byte ---------------------------

SNAPSHOT = datetime(2024, 2, 12, tzinfo=UTC)


def tricky_workspace(root: Path, customers: int = 400, seed: int = 7) -> Workspace:
    """Feature tables holding what a bulk writer could get wrong: nulls of every kind,
    -0.0, NaN, infinities, large ints, empty and non-ASCII strings, entities whose
    newest row is the older snapshot of the window, and rows outside the window."""
    import numpy as np

    from features.build import BUILD_SUMMARY, BuildSummary, write_feature_table

    ws = Workspace(root)
    ws.feature_tables.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    snapshots = [SNAPSHOT - timedelta(days=21), SNAPSHOT - timedelta(days=7), SNAPSHOT]
    floats = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-300, 123.456, None]
    ints = [0, -1, 2**62, -(2**62), 7, None]
    strings = ["", "a", "gold", "Zürich ☃", "b" * 300, None]
    tables = (("customer", "customer_id", customers), ("lead", "lead_id", 30), ("product", "product_id", 30),
              (VALUE_TABLE, "customer_id", customers))
    for entity, key, n in tables:
        frames = []
        for s, snap in enumerate(snapshots):
            ids = [f"{entity[0].upper()}{i}" for i in range(n) if not (s == 2 and i % 7 == 0) and not (s == 1 and i % 5 == 0)]
            cols: dict = {key: ids, EVENT_TIMESTAMP: [snap] * len(ids)}
            for spec in FEATURES[entity]:
                pool = ints if spec.kind == "int" else floats if spec.kind == "float" else strings
                picks = rng.integers(0, len(pool) + 3, len(ids))
                if spec.kind == "float":
                    cols[spec.name] = [pool[p] if p < len(pool) else float(rng.normal()) for p in picks]
                elif spec.kind == "int":
                    cols[spec.name] = [pool[p] if p < len(pool) else int(rng.integers(0, 100)) for p in picks]
                else:
                    cols[spec.name] = [pool[p] if p < len(pool) else f"v{int(rng.integers(0, 5))}" for p in picks]
            schema = {key: pl.String, EVENT_TIMESTAMP: pl.Datetime("us", "UTC")} | {
                spec.name: {"int": pl.Int64, "float": pl.Float64, "str": pl.String}[spec.kind] for spec in FEATURES[entity]
            }
            frames.append(pl.DataFrame(cols, schema=schema))
        write_feature_table(pl.concat(frames), ws.feature_tables / table_file(entity))
    summary = BuildSummary(lake="tricky", as_of=snapshots, tables_present=[], tables_missing=[], entities={}, seconds=0)
    (ws.feature_tables / BUILD_SUMMARY).write_text(summary.model_dump_json())
    return ws


def sqlite_rows(store) -> dict[str, list[tuple]]:
    import sqlite3

    from features.store import ONLINE_FILE

    path = Path(store.config.online_store.path)
    assert path.name == ONLINE_FILE
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: conn.execute(f'SELECT * FROM "{t}" ORDER BY entity_key, feature_name').fetchall() for t in tables
        }


def test_bulk_materialize_writes_what_feast_writes(tmp_path: Path) -> None:
    from features.materialize import materialize_latest
    from features.store import apply_repository, feature_store

    stores = {}
    for fast in (False, True):
        ws = tricky_workspace(tmp_path / ("bulk" if fast else "feast"))
        store = feature_store(ws)
        apply_repository(store, ws.feature_tables)
        materialize_latest(store, ws.feature_tables, fast=fast)
        stores[fast] = store
    feast, bulk = sqlite_rows(stores[False]), sqlite_rows(stores[True])
    assert set(feast) == set(bulk)
    for table, rows in feast.items():
        assert bulk[table] == rows, table
    for name in VIEW_NAMES.values():
        assert len(feast[f"crmscore_{name}"]) > 0, name
    # Feast's bookkeeping: the materialized interval is recorded in the registry.
    view = stores[True].get_feature_view("customer_features")
    assert view.materialization_intervals == stores[False].get_feature_view("customer_features").materialization_intervals
    # Re-materializing (an upsert over existing rows) changes nothing.
    materialize_latest(stores[True], stores[True].config.repo_path)
    assert sqlite_rows(stores[True]) == bulk


def test_fast_read_equals_sdk_on_tricky_values(tmp_path: Path) -> None:
    """The fast read and Feast's get_online_features agree value by value and dtype by
    dtype on nulls, -0.0, infinities, big ints, odd strings and missing entities."""
    from features.materialize import materialize_latest
    from features.store import apply_repository, feature_store

    ws = tricky_workspace(tmp_path)
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    materialize_latest(store, ws.feature_tables)
    assert_fast_equals_sdk(store)


def assert_fast_equals_sdk(store) -> None:
    ids = [f"C{i}" for i in range(0, 400, 3)] + ["nobody", "C1", "C1"]
    now = SNAPSHOT + timedelta(days=1)
    for chunk in (ids[:1], ids[1:2], ids[-3:], ids):
        fast = read_online(store, "churn_v1", chunk, now=now)
        sdk = read_online(store, "churn_v1", chunk, now=now, fast=False)
        pd.testing.assert_frame_equal(online_frame(fast), online_frame(sdk)[online_frame(fast).columns])
        assert fast.freshness == sdk.freshness
    lead = read_online(store, "lead_scoring_v1", ["L0", "L3"], now=now)
    pd.testing.assert_frame_equal(online_frame(lead), online_frame(read_online(store, "lead_scoring_v1", ["L0", "L3"], now=now, fast=False)))


def test_decoded_values_are_memoized_but_lists_never_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each distinct stored ValueProto is parsed once and reused; list values are parsed
    per occurrence (so two rows never share one mutable list) and stored as one element,
    not spread into the array by numpy; a full cache starts over without losing the
    values the current call needs."""
    from feast.protos.feast.types.Value_pb2 import Int64List
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    from features import codec

    three = ValueProto(int64_val=3).SerializeToString()
    name = ValueProto(string_val="smb").SerializeToString()
    items = ValueProto(int64_list_val=Int64List(val=[1, 2])).SerializeToString()
    assert codec.decode_values([three, None, b"", name, three]).tolist() == [3, None, None, "smb", 3]
    column = codec.decode_values([items, three, items])
    assert column.shape == (3,) and column.tolist() == [[1, 2], 3, [1, 2]] and column[0] is not column[2]

    monkeypatch.setattr(codec, "_VALUES", dict(codec._NULLS))
    monkeypatch.setattr(codec, "CACHE_LIMIT", 4)
    blobs = [ValueProto(int64_val=i).SerializeToString() for i in range(5)]
    assert codec.decode_values(blobs[:3]).tolist() == [0, 1, 2]
    assert codec.decode_values([blobs[0], blobs[3], blobs[4]]).tolist() == [0, 3, 4]
    assert len(codec._VALUES) <= 2 + 3  # the nulls and this call's values


def test_fast_sqlite_read_follows_a_replaced_store_file(tmp_path: Path) -> None:
    """A workspace rebuilt under a running service replaces online_store.db: the reader
    must read the new file, not the unlinked one its connection still holds open."""
    import shutil
    import sqlite3

    from features.codec import entity_keys
    from features.materialize import materialize_latest
    from features.online import read_online
    from features.store import apply_repository, feature_store

    ws = tricky_workspace(tmp_path)
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    materialize_latest(store, ws.feature_tables)
    assert read_online(store, "churn_v1", ["C1", "C3"]).freshness["customer_features"].found == [True, True]

    db = ws.feast / "online_store.db"
    rebuilt = tmp_path / "rebuilt.db"
    shutil.copy(db, rebuilt)
    with sqlite3.connect(rebuilt) as conn:  # the rebuilt store no longer has C3's row
        (c3,) = entity_keys(("customer_id",), [("C3",)], store.config.entity_key_serialization_version)
        conn.execute('DELETE FROM "crmscore_customer_features" WHERE entity_key = ?', (c3,))
    os.replace(rebuilt, db)
    assert read_online(store, "churn_v1", ["C1", "C3"]).freshness["customer_features"].found == [True, False]
    db.unlink()
    with pytest.raises(FileNotFoundError):
        read_online(store, "churn_v1", ["C1"])
    assert not db.exists()  # no empty store made in its place
