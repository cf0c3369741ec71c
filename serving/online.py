"""Online features on the request path: ``features.online.read_online``, shaped for scoring.

``read_online`` (the project's one online read, with per-view freshness) returns
per-feature columns; scoring wants those and, per requested id, whether a row
was found, its age and a stale flag. This adapter does that, and turns the
store's own exceptions (connection refused, locked, missing table) into
``StoreUnavailable`` so the service answers 503 instead of 500.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crmdata.errors import CrmscoreError

if TYPE_CHECKING:
    from feast import FeatureStore

PROBE_ID = "__crmscore_readyz_probe__"


class StoreUnavailable(Exception):
    """The online store did not answer."""


def _store_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the store is down", as opposed to a bug in this code."""
    errors: list[type[BaseException]] = [sqlite3.Error, OSError, TimeoutError]
    try:
        import redis

        errors.append(redis.exceptions.RedisError)
    except ImportError:  # the redis extra is not installed: local profile only
        pass
    try:
        import sqlalchemy

        errors.append(sqlalchemy.exc.SQLAlchemyError)  # the SQL registry (redis profile)
    except ImportError:
        pass
    return tuple(errors)


@dataclass(frozen=True)
class Rows:
    """Feature values of a batch, one entry per requested id, in request order."""

    ids: list[str]
    values: Mapping[str, Any]  # feature -> n values (a numpy object array or a list)
    found: list[bool]  # a row in every view read
    age_seconds: list[float | None]  # the oldest view row's age; None when a view had none
    stale: list[bool]  # missing, or older than its view's TTL


class OnlineReader:
    """One feature service, optionally only some of its views.

    ``fixed_keys`` supplies the other join keys of a multi-entity service (the
    next-best-product service is keyed by customer *and* product; the service
    reads the customer's half with one anchor product).
    """

    def __init__(self, store: FeatureStore, service: str, views: Sequence[str] | None = None,
                 fixed_keys: Mapping[str, str] | None = None) -> None:
        from feast.errors import FeatureServiceNotFoundException

        self.store = store
        self.service = service
        self.fixed_keys = dict(fixed_keys or {})
        self._errors = _store_errors()
        # Feast's SQLite connection is shared by the request threads: one read at a time.
        self._lock = threading.Lock()
        try:
            fs = store.get_feature_service(service, allow_cache=True)
        except FeatureServiceNotFoundException:
            raise CrmscoreError(f"feature service {service!r} is not registered; run `crmscore features apply`") from None
        projections = [p for p in fs.feature_view_projections if views is None or p.name_to_use() in views]
        if not projections:
            raise CrmscoreError(f"{service} has none of the views {list(views or [])}")
        self.views = [p.name_to_use() for p in projections]
        self.features = [f.name for p in projections for f in p.features]
        keys = {c.name for p in projections for c in store.get_feature_view(p.name).entity_columns}
        keys -= set(self.fixed_keys)
        if len(keys) != 1:
            raise CrmscoreError(f"{service}: expected one join key besides {list(self.fixed_keys)}, found {keys}")
        self.join_key = keys.pop()

    def read(self, ids: Sequence[str], now: datetime) -> Rows:
        """Features for ``ids`` (duplicates allowed) with freshness against ``now``; raises
        ``StoreUnavailable`` when the store does not answer."""
        from features.online import read_online

        ids = [str(i) for i in ids]
        entity: Any = ids
        if self.fixed_keys:
            entity = {self.join_key: ids, **{k: [v] * len(ids) for k, v in self.fixed_keys.items()}}
        try:
            with self._lock:
                result = read_online(self.store, self.service, entity, now=now)
        except self._errors as exc:
            raise StoreUnavailable(f"online store unavailable ({exc.__class__.__name__})") from exc
        except CrmscoreError as exc:  # e.g. the service was removed from the registry
            raise StoreUnavailable(str(exc)) from exc
        values = {name: result.columns[name] for name in self.features}
        return Rows(ids=ids, values=values, found=result.found, age_seconds=result.max_age_seconds,
                    stale=result.stale)

    def probe(self) -> None:
        """Read an id that does not exist: raises ``StoreUnavailable`` if the store is down."""
        self.read([PROBE_ID], datetime.now(UTC))

