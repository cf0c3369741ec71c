"""The Redis profile: the predictor reading a real Redis, and an outage it recovers from.

A private ``redis-server`` on a free port (so killing it disturbs no one else),
filled by ``materialize_latest`` from the tiny world; the Feast registry is a
copy of the world's file registry (the Redis profile's PostgreSQL registry is
tested in test_features_redis.py; the online reads are what matter here).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest_serving import PrivateRedis, ServingWorld

pytest_plugins = ["tests.conftest_serving"]
pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    server = PrivateRedis(directory=tmp_path)
    server.start()
    yield server
    server.stop(save=False)


def test_redis_profile_answers_like_sqlite_and_recovers_from_an_outage(
        serving_world: ServingWorld, private_redis: PrivateRedis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from features.materialize import materialize_latest
    from features.store import Profile, StoreSettings, config_dict
    from serving.predictor import Predictor, ServingSettings, Unavailable
    from serving.schemas import ChurnRiskRequest
    from training.registry import configure_mlflow

    for name, value in serving_world.env().items():
        monkeypatch.setenv(name, value)
    configure_mlflow()
    ws = serving_world.ws
    registry = tmp_path / "registry.db"
    shutil.copy(ws.feast / "registry.db", registry)
    config = config_dict(ws, StoreSettings(profile=Profile.REDIS, redis_url=f"redis://127.0.0.1:{private_redis.port}/0"))
    config["registry"] = {"registry_type": "file", "path": str(registry)}
    store = FeatureStore(config=RepoConfig(repo_path=ws.feature_tables, **config))
    materialize_latest(store, ws.feature_tables)

    settings = ServingSettings.from_env()
    redis_side = Predictor(settings.model_copy(update={"profile": Profile.REDIS, "models": ["churn", "nbp"]}),
                           store=store)
    sqlite_side = Predictor(settings.model_copy(update={"models": ["churn"]}))
    request = ChurnRiskRequest(customer_ids=[*serving_world.customer_ids[:30], "C-nobody"])
    assert redis_side.churn_risk(request) == sqlite_side.churn_risk(request)
    assert redis_side.ready()

    private_redis.stop()
    with pytest.raises(Unavailable, match=r"online store unavailable \(ConnectionError\)"):
        redis_side.churn_risk(request)
    time.sleep(1.1)  # past the readiness probe's cache
    assert not redis_side.ready()

    private_redis.start()  # same port, same data: the service needs no restart
    # Ready again within seconds: the last verdict is kept for a probe interval and the
    # store's circuit breaker lets a trial read through once its open period has passed.
    deadline = time.monotonic() + 5
    while not redis_side.ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert redis_side.ready()
    assert redis_side.churn_risk(request) == sqlite_side.churn_risk(request)


def test_a_redis_that_stops_answering_is_a_503_in_seconds_not_a_hang(
        serving_world: ServingWorld, private_redis: PrivateRedis, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition (the server alive but silent, as SIGSTOP makes it) must not hold a
    request until BentoML's 30 s timeout: the socket timeout from the URL turns it into
    Unavailable (503), and the service answers again once Redis does."""
    import os
    import signal

    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from features.materialize import materialize_latest
    from features.store import Profile, StoreSettings, config_dict
    from serving.predictor import Predictor, ServingSettings, Unavailable
    from serving.schemas import ChurnRiskRequest
    from training.registry import configure_mlflow

    for name, value in serving_world.env().items():
        monkeypatch.setenv(name, value)
    configure_mlflow()
    ws = serving_world.ws
    registry = tmp_path / "registry.db"
    shutil.copy(ws.feast / "registry.db", registry)
    url = f"redis://127.0.0.1:{private_redis.port}/0?socket_timeout=0.5"
    config = config_dict(ws, StoreSettings(profile=Profile.REDIS, redis_url=url))
    config["registry"] = {"registry_type": "file", "path": str(registry)}
    store = FeatureStore(config=RepoConfig(repo_path=ws.feature_tables, **config))
    materialize_latest(store, ws.feature_tables)
    predictor = Predictor(ServingSettings.from_env().model_copy(update={"profile": Profile.REDIS, "models": ["churn"]}),
                          store=store)
    request = ChurnRiskRequest(customer_ids=serving_world.customer_ids[:5])
    answered = predictor.churn_risk(request)

    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"online store unavailable \(no answer within"):
            predictor.churn_risk(request)
        assert time.monotonic() - started < 5
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    assert predictor.churn_risk(request) == answered
