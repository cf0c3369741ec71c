"""The Feast store per profile, and registering the repository in it.

Two profiles, one code path (DESIGN.md):

* ``local`` (embedded, the default): DuckDB offline store over the workspace's
  feature tables, SQLite online store and a file registry, both in
  ``Workspace.feast``;
* ``redis`` (production): Redis online store (``CRMSCORE_REDIS_URL``) and a SQL
  registry on PostgreSQL (``CRMSCORE_REGISTRY_URL``); the offline store is the
  same DuckDB over the same feature tables.

The Feast objects come from the definition modules (``entities``,
``data_sources``, ``feature_views``, ``feature_services``); ``repository_objects``
copies them and points the data sources at a workspace, so a process (a test
suite, a service) can register several workspaces without re-importing them.
Loading the online store is ``features.materialize``.
"""

from __future__ import annotations

import copy
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlparse

import yaml
from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from features.build import read_build_summary
from features.catalog import ATTRIBUTE_PREFIX, FEATURES, VIEW_NAMES

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

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
        "# Written by crmscore whenever it applies the repository (`features apply`, `pipeline run`);\n"
        f"# for Feast's own CLI on this workspace:   feast -f {path} ui\n"
        + yaml.safe_dump(config_dict(ws, settings), sort_keys=False)
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
    #: The resolved feature_store.yaml for Feast's CLI, when ``apply_workspace`` wrote one.
    feast_config: Path | None = None

    def render(self) -> str:
        views = ", ".join(f"{v} ({n} features)" for v, n in self.feature_views.items())
        services = ", ".join(self.feature_services)
        text = (
            f"registered project {self.project} ({self.profile}) in {self.seconds:.1f}s\n"
            f"  views: {views}\n  services: {services}"
        )
        return text + (f"\n  Feast CLI config: {self.feast_config}" if self.feast_config else "")


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


def apply_workspace(
    store: FeatureStore, ws: Workspace, profile: Profile | str = Profile.LOCAL
) -> ApplySummary:
    """``apply_repository`` on a workspace, then its resolved ``feature_store.yaml``.

    Every crmscore command that registers the repository comes through here, so that
    after any of them (``make demo`` included) Feast's own tools find the workspace:
    ``feast -f HOME/feast/feature_store.yaml ui``.
    """
    chosen = Profile(profile)
    summary = apply_repository(store, ws.feature_tables, chosen)
    path = write_feature_store_yaml(ws, StoreSettings(profile=chosen))
    return summary.model_copy(update={"feast_config": path})


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
