"""The production profile against the real servers: Redis online store on
127.0.0.1:6379 and the SQL registry on PostgreSQL 127.0.0.1:5432.

Isolation: a throw-away PostgreSQL database and a unique Feast project name (the
Redis keys carry it); both are removed at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pandas as pd
import polars as pl
import pytest

from crmdata.workspace import Workspace
from features.build import build_features
from features.catalog import EVENT_TIMESTAMP, VALUE_TABLE, table_file
from features.grid import snapshot_grid
from features.materialize import materialize_latest
from features.online import read_online
from features.store import DEFAULT_REDIS_URL, Profile, apply_repository, feature_store
from features.training import service_features, training_frame
from tests.factories import online_frame, write_lake

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _redis_or_skip():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(DEFAULT_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001  (any connection failure means "no Redis here")
        pytest.skip(f"no Redis answers at {DEFAULT_REDIS_URL} ({exc.__class__.__name__})")
    return client


@pytest.fixture
def registry_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"crmscore_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_redis_profile_end_to_end(tmp_path, registry_url: str) -> None:
    client = _redis_or_skip()
    project = f"crmscore_t{uuid.uuid4().hex[:8]}"
    ws = Workspace(tmp_path)
    lake = write_lake(ws.lake)
    build_features(lake, ws.feature_tables, snapshot_grid(lake))
    store = feature_store(ws, Profile.REDIS, project=project, registry_url=registry_url)
    try:
        summary = apply_repository(store, ws.feature_tables, Profile.REDIS)
        assert set(summary.feature_services) == {"churn_v1", "lead_scoring_v1", "next_best_product_v1", "customer_value"}
        # A second store (another process) sees the registry through PostgreSQL.
        other = feature_store(ws, "redis", project=project, registry_url=registry_url)
        assert {s.name for s in other.list_feature_services()} == set(summary.feature_services)

        materialize_latest(store, ws.feature_tables)
        assert any(project.encode() in key for key in client.scan_iter(count=1000))
        offline = pl.read_parquet(ws.feature_tables / table_file("customer"))
        latest = offline.filter(pl.col(EVENT_TIMESTAMP) == offline[EVENT_TIMESTAMP].max()).sort("customer_id")
        # churn_v1 also serves the peer columns of the customer-value view.
        value = pl.read_parquet(ws.feature_tables / table_file(VALUE_TABLE))
        value = value.filter(pl.col(EVENT_TIMESTAMP) == latest[EVENT_TIMESTAMP].max()).drop(EVENT_TIMESTAMP)
        latest = latest.join(value, on="customer_id", how="left").sort("customer_id")
        ids = latest["customer_id"].to_list()
        newest = latest[EVENT_TIMESTAMP][0]
        for fast in (True, False):
            result = read_online(other, "churn_v1", ids + ["nobody"], fast=fast, now=newest)
            for column in service_features(other.get_feature_service("churn_v1")):
                online = online_frame(result)[column].tolist()[:-1]
                expected = latest[column].to_list()
                assert all((a is None or pd.isna(a)) and b is None or a == b for a, b in zip(online, expected, strict=True)), column
            fresh = result.freshness["customer_features"]
            assert fresh.found == [True] * len(ids) + [False]
            assert fresh.age_seconds[0] == 0.0 and fresh.stale[0] is False

        labels = pd.DataFrame({"customer_id": ids, EVENT_TIMESTAMP: [datetime(2024, 2, 12, tzinfo=UTC)] * len(ids), "label": 0})
        frame = training_frame(other, "churn_v1", labels)
        assert frame["orders_total"].tolist() == latest["orders_total"].to_list()
    finally:
        store.teardown()
        leftovers = [k for k in client.scan_iter(count=1000) if project.encode() in k]
        if leftovers:
            client.delete(*leftovers)


def _redis_store(ws: Workspace, project: str):
    """A Redis-profile store with a file registry (the online store is what is tested)."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from features.store import StoreSettings, config_dict

    config = config_dict(ws, StoreSettings(profile=Profile.REDIS, project=project))
    config["registry"] = {"registry_type": "file", "path": str(ws.feast / "registry.db")}
    ws.feast.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=RepoConfig(repo_path=ws.feature_tables, **config))


def _hashes(client, project: str) -> dict[bytes, dict[bytes, bytes]]:
    suffix = project.encode()
    keys = sorted(k for k in client.scan_iter(count=10_000) if k.endswith(suffix))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return {k[: -len(suffix)]: h for k, h in zip(keys, pipe.execute(), strict=True)}


@pytest.mark.parametrize("skip_dedup", [False, True], ids=["dedup", "skip_dedup"])
def test_bulk_materialize_writes_what_feast_writes_redis(tmp_path, skip_dedup: bool) -> None:
    """Bulk materialize = Feast's materialize, hash by hash and byte by byte, including
    Feast's rule that a stored row with a newer (or equal) event time is kept."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from tests.test_features_store import SNAPSHOT, assert_fast_equals_sdk, tricky_workspace

    client = _redis_or_skip()
    run = uuid.uuid4().hex[:8]
    projects = {fast: f"crmscore_b{run}{int(fast)}" for fast in (False, True)}
    stores = {}
    try:
        for fast, project in projects.items():
            ws = tricky_workspace(tmp_path / project)
            store = _redis_store(ws, project)
            if skip_dedup:
                store.config.online_store.skip_dedup = True
            apply_repository(store, ws.feature_tables, Profile.REDIS)
            stores[fast] = store
            materialize_latest(store, ws.feature_tables, fast=fast)
        feast, bulk = _hashes(client, projects[False]), _hashes(client, projects[True])
        assert len(feast) > 400  # customers, leads and products
        assert bulk == feast
        if not skip_dedup:  # and the fast read = Feast's get_online_features on them
            assert_fast_equals_sdk(stores[True])
        # A newer row already stored (C1, C2) must survive (unless skip_dedup); an older
        # one (C3) is replaced. Same outcome both ways.
        newer, older = Timestamp(), Timestamp()
        newer.FromDatetime(SNAPSHOT + timedelta(days=1))
        older.FromDatetime(SNAPSHOT - timedelta(days=30))
        for project in projects.values():
            keys = {k[: -len(project)]: k for k in client.scan_iter(count=10_000) if k.endswith(project.encode())}
            for name, stamp in (("C1", newer), ("C2", newer), ("C3", older)):
                key = next(v for k, v in keys.items() if k.endswith(name.encode()))
                client.hset(key, mapping={b"_ts:customer_features": stamp.SerializeToString(), b"x": b"kept"})
        for fast, store in stores.items():
            materialize_latest(store, store.config.repo_path, fast=fast)
        feast, bulk = _hashes(client, projects[False]), _hashes(client, projects[True])
        assert bulk == feast
        kept = next(h for k, h in feast.items() if k.endswith(b"C1"))
        assert kept[b"_ts:customer_features"] == (
            newer.SerializeToString() if not skip_dedup else next(h for k, h in feast.items() if k.endswith(b"C3"))[b"_ts:customer_features"]
        )
    finally:
        for store in stores.values():
            store.teardown()
        for project in projects.values():
            leftovers = [k for k in client.scan_iter(count=10_000) if project.encode() in k]
            if leftovers:
                client.delete(*leftovers)
