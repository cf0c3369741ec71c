"""Online features on the request path: ``features.online.read_online``, shaped for scoring.

``read_online`` (the project's one online read, with per-view freshness) returns
per-feature columns; scoring wants those and, per requested id, whether a row
was found, its age, a stale flag and the features a partial row lacks. This
adapter does that, and turns the store's own exceptions (connection refused,
locked, missing table) into ``StoreUnavailable`` so the service answers 503
instead of 500.

A stalled store must not stall the service. Every read runs on a small pool of
store threads and the request thread waits at most ``deadline`` seconds for it;
a ``Breaker`` per online store counts failures and timeouts, and once open
refuses reads at once (503 with the reason) until a single half-open trial read
succeeds. A read stuck in a silent socket keeps only its store thread, until
the client's own socket timeout frees it; when every store thread is stuck,
reads are refused at once too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from crmdata.errors import CrmscoreError

if TYPE_CHECKING:
    from feast import FeatureStore

PROBE_ID = "__crmscore_readyz_probe__"
DEADLINE_ENV = "CRMSCORE_STORE_DEADLINE_SECONDS"
#: How long a request waits for the online store. A batch of 1,000 reads in ~0.1 s; a
#: read that takes 0.6 s is a stalled store, and the caller is better off with a 503 now.
DEFAULT_DEADLINE_SECONDS = 0.6
#: Consecutive failed reads that open the breaker.
FAILURES_TO_OPEN = 3
#: How long an open breaker refuses reads before it lets one trial read through.
OPEN_SECONDS = 1.0
#: Store threads: reads in flight at once (4 request threads + the readiness probe), plus
#: room for a few stuck in a silent socket while the breaker opens.
STORE_THREADS = 8

T = TypeVar("T")


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


class Breaker:
    """A circuit breaker and a bounded pool of store threads for one online store.

    closed: reads run (each bounded by ``deadline``); ``FAILURES_TO_OPEN`` failures in
    a row open it. open: reads are refused at once for ``OPEN_SECONDS``, then one
    trial read is let through (half-open) while the others are still refused; its
    success closes the breaker, its failure opens it again.
    """

    def __init__(self, deadline: float | None = None, failures_to_open: int = FAILURES_TO_OPEN,
                 open_seconds: float = OPEN_SECONDS, threads: int = STORE_THREADS) -> None:
        self.deadline = deadline or float(os.environ.get(DEADLINE_ENV) or DEFAULT_DEADLINE_SECONDS)
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="online-store")
        self._slots = threading.BoundedSemaphore(threads)
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial read is in flight
        self.last_error: str | None = None

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if time.monotonic() - self._opened_at >= self.open_seconds else "open"

    def call(self, read: Callable[[], T], errors: tuple[type[BaseException], ...]) -> T:
        """``read()`` on a store thread within the deadline; raises ``StoreUnavailable``
        at once when the breaker is open or every store thread is busy."""
        trial = self._admit()
        if not self._slots.acquire(blocking=False):
            self._release_trial(trial)
            raise StoreUnavailable("online store unavailable (every store thread is waiting on it)")
        try:
            future = self._pool.submit(read)
        except RuntimeError:  # the pool was shut down: the service is stopping
            self._slots.release()
            self._release_trial(trial)
            raise StoreUnavailable("online store unavailable (the service is stopping)") from None
        future.add_done_callback(lambda _: self._slots.release())
        try:
            result = future.result(timeout=self.deadline)
        except FutureTimeout:
            self._failed(f"no answer within {self.deadline:g}s", trial)
            raise StoreUnavailable(f"online store unavailable (no answer within {self.deadline:g}s)") from None
        except errors as exc:
            self._failed(exc.__class__.__name__, trial)
            raise StoreUnavailable(f"online store unavailable ({exc.__class__.__name__})") from exc
        except BaseException:
            self._release_trial(trial)
            raise
        self._succeeded()
        return result

    def _admit(self) -> bool:
        """Whether the call may run; True when it is the half-open trial."""
        with self._lock:
            if self._opened_at is None:
                return False
            waited = time.monotonic() - self._opened_at
            if waited < self.open_seconds or self._trial:
                retry = max(self.open_seconds - waited, 0.0)
                raise StoreUnavailable(f"online store unavailable (circuit open after {self.last_error}; "
                                       f"next try in {retry:.1f}s)")
            self._trial = True
            return True

    def _release_trial(self, trial: bool) -> None:
        if trial:
            with self._lock:
                self._trial = False

    def _failed(self, why: str, trial: bool) -> None:
        with self._lock:
            self._failures += 1
            self.last_error = why
            if trial or self._failures >= self.failures_to_open:
                self._opened_at = time.monotonic()
            if trial:
                self._trial = False

    def _succeeded(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial = 0, None, False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Rows:
    """Feature values of a batch, one entry per requested id, in request order."""

    ids: list[str]
    values: Mapping[str, Any]  # feature -> n values (a numpy object array or a list)
    found: list[bool]  # a row in every view read
    age_seconds: list[float | None]  # the oldest view row's age; None when a view had none
    stale: list[bool]  # missing, or older than its view's TTL
    absent: list[tuple[str, ...]]  # a found row's features with no stored value (a partial row)
    freshness: Mapping[str, Any]  # view -> features.online.ViewFreshness (the readiness probe reads it)


class OnlineReader:
    """One feature service, optionally only some of its views.

    ``fixed_keys`` supplies the other join keys of a multi-entity service (the
    next-best-product service is keyed by customer *and* product; the service
    reads the customer's half with one anchor product).
    """

    def __init__(self, store: FeatureStore, service: str, views: Sequence[str] | None = None,
                 fixed_keys: Mapping[str, str] | None = None, breaker: Breaker | None = None) -> None:
        from feast.errors import FeatureServiceNotFoundException
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        self.store = store
        self.service = service
        self.fixed_keys = dict(fixed_keys or {})
        self.breaker = breaker or Breaker()
        self._errors = _store_errors()
        # A SQLite connection is used by one thread at a time; Redis clients are thread-safe
        # (a pool of connections), so Redis reads run side by side.
        self._lock: Any = (threading.Lock() if isinstance(store._get_provider().online_store, SqliteOnlineStore)
                           else contextlib.nullcontext())
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
        def read() -> Any:
            with self._lock:
                return read_online(self.store, self.service, entity, now=now)

        try:
            result = self.breaker.call(read, self._errors)
        except CrmscoreError as exc:  # e.g. the service was removed from the registry
            raise StoreUnavailable(str(exc)) from exc
        values = {name: result.columns[name] for name in self.features}
        return Rows(ids=ids, values=values, found=result.found, age_seconds=result.max_age_seconds,
                    stale=result.stale, absent=result.absent or [()] * len(ids),
                    freshness=result.freshness)

    def probe(self) -> None:
        """Read an id that does not exist: raises ``StoreUnavailable`` if the store is down."""
        self.read([PROBE_ID], datetime.now(UTC))

