"""Scores pushed through the bulk writer (``features.materialize.write_online``, which
``crmscore push-scores`` uses) = Feast's own ``FeatureStore.push``, byte for byte: every
SQLite row, and every Redis hash on a private redis-server; list-valued scores (nbp)
are left to Feast."""

from __future__ import annotations

import contextlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from features.catalog import SCORE_FIELDS, SCORE_VIEW_NAMES
from features.materialize import write_online
from features.store import Profile, apply_repository, feature_store
from tests.test_features_store import sqlite_rows, tricky_workspace

AS_OF = datetime(2024, 2, 12, tzinfo=UTC)


def churn_scores(n: int = 300, as_of: datetime = AS_OF) -> pa.Table:
    """A churn run with what a writer could get wrong: a null, NaN, -0.0 and extreme
    probabilities, null and non-ASCII strings, ids out of key order."""
    probabilities = [0.0, -0.0, 1.0, 1e-300, None, float("nan"), 0.123456789]
    return pa.table({
        "customer_id": [f"C{(i * 37) % n}" for i in range(n)],
        "as_of": pa.array([as_of] * n, type=pa.timestamp("us", tz="UTC")),
        "probability": pa.array([probabilities[i % len(probabilities)] for i in range(n)], type=pa.float64()),
        "score": pa.array([i % 99 + 1 for i in range(n)], type=pa.int64()),
        "band": [("high", "medium", "low", "")[i % 4] for i in range(n)],
        "reasons": [None if i % 3 else '{"up": [{"feature": "Zürich ☃"}], "down": []}' for i in range(n)],
        "model_version": ["3"] * n,
    })


def _feast_push(store, table: pa.Table) -> None:
    from feast.data_source import PushMode

    view = SCORE_VIEW_NAMES["churn"]
    store.push(f"{view}_push", table.to_pandas(), to=PushMode.ONLINE)


def test_bulk_push_writes_what_feast_push_writes_sqlite(tmp_path: Path) -> None:
    stores = {}
    for bulk in (False, True):
        ws = tricky_workspace(tmp_path / ("bulk" if bulk else "feast"), customers=300)
        store = feature_store(ws)
        apply_repository(store, ws.feature_tables)
        for as_of in (AS_OF - timedelta(days=7), AS_OF):  # the second push replaces the first
            table = churn_scores(as_of=as_of)
            if bulk:
                assert write_online(store, SCORE_VIEW_NAMES["churn"], table)
            else:
                _feast_push(store, table)
        stores[bulk] = store
    feast, bulk_rows = sqlite_rows(stores[False]), sqlite_rows(stores[True])
    table = "crmscore_churn_scores"
    assert len(feast[table]) == 300 * len(SCORE_FIELDS["churn"])
    assert bulk_rows[table] == feast[table]


def test_list_valued_scores_are_left_to_feast(tmp_path: Path) -> None:
    ws = tricky_workspace(tmp_path, customers=10)
    store = feature_store(ws)
    apply_repository(store, ws.feature_tables)
    assert write_online(store, SCORE_VIEW_NAMES["nbp"], pa.table({"customer_id": ["C1"]})) is False
    assert not sqlite_rows(store)["crmscore_nbp_scores"]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server installed")
def test_bulk_push_writes_what_feast_push_writes_redis(tmp_path: Path) -> None:
    """Including Feast's rule on Redis: an older push does not replace a newer row."""
    import redis
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from features.store import StoreSettings, config_dict
    from tests.conftest_serving import PrivateRedis

    server = PrivateRedis()
    server.start()
    client = redis.Redis(port=server.port)
    hashes = {}
    try:
        for bulk in (False, True):
            ws = tricky_workspace(tmp_path / ("bulk" if bulk else "feast"), customers=300)
            project = f"push{int(bulk)}"
            settings = StoreSettings(profile=Profile.REDIS, project=project, redis_url=f"redis://127.0.0.1:{server.port}/0")
            config = config_dict(ws, settings)
            config["registry"] = {"registry_type": "file", "path": str(ws.feast / "registry.db")}
            ws.feast.mkdir(parents=True, exist_ok=True)
            store = FeatureStore(config=RepoConfig(repo_path=ws.feature_tables, **config))
            apply_repository(store, ws.feature_tables, Profile.REDIS)
            for as_of in (AS_OF, AS_OF - timedelta(days=7), AS_OF):  # older: kept out; same time: kept
                table = churn_scores(as_of=as_of)
                if bulk:
                    assert write_online(store, SCORE_VIEW_NAMES["churn"], table)
                else:
                    _feast_push(store, table)
            keys = sorted(k for k in client.scan_iter(count=10_000) if k.endswith(project.encode()))
            hashes[bulk] = {k[: -len(project)]: client.hgetall(k) for k in keys}
        assert len(hashes[False]) == 300
        assert hashes[True] == hashes[False]
    finally:
        with contextlib.suppress(Exception):
            client.close()
        server.kill()
