"""The champions the service answers with, and swapping in a newly promoted one.

Each model has a ``Slot`` holding the loaded champion. A request reads the slot
once and uses that object to the end, so a swap (one reference assignment)
never disturbs a request in flight: it finishes on the version it started
with, and says so. ``Champions.refresh`` asks the MLflow registry which version
is ``@champion`` now, loads any that changed *before* swapping it in, and
keeps the old one if the new one cannot be loaded or served. A daemon thread
calls it every ``poll_seconds``; ``POST /admin/reload`` calls it on demand.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from crmdata.errors import CrmscoreError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Loaded(Generic[T]):
    """A champion and the objects built for it (scorer, online reader)."""

    name: str
    version: str
    alias: str | None
    value: T
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Slot(Generic[T]):
    """One model's current champion; ``load(version)`` builds a ``Loaded`` for a version number."""

    name: str
    load: Callable[[str], Loaded[T]]
    current: Loaded[T] | None = None
    error: str | None = None


class Champions:
    def __init__(self, client: Any, slots: list[Slot[Any]], alias: str = "champion") -> None:
        self.client = client
        self.slots = {s.name: s for s in slots}
        self.alias = alias
        self._refresh_lock = threading.Lock()  # one refresh at a time (poll thread vs admin call)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> Loaded[Any] | None:
        return self.slots[name].current

    def refresh(self) -> list[str]:
        """Load every champion that changed since the last refresh; returns the swapped model names."""
        from training.registry import version_by_alias

        changed = []
        with self._refresh_lock:
            for slot in self.slots.values():
                try:
                    mv = version_by_alias(self.client, slot.name, self.alias)
                except Exception as exc:  # noqa: BLE001  (the registry is down: keep serving what we have)
                    slot.error = f"registry unavailable ({exc.__class__.__name__})"
                    log.warning("%s: %s", slot.name, slot.error)
                    continue
                if mv is None:
                    if slot.current is None:
                        slot.error = f"{slot.name} has no @{self.alias}; train one with `crmscore train`"
                    continue
                version = str(mv.version)
                if slot.current is not None and slot.current.version == version:
                    continue
                try:
                    loaded = slot.load(version)
                except Exception as exc:
                    detail = str(exc) if isinstance(exc, CrmscoreError) else exc.__class__.__name__
                    slot.error = f"version {version} not loaded: {detail}"
                    log.error("%s: %s (still serving %s)", slot.name, slot.error,
                              slot.current.version if slot.current else "nothing",
                              exc_info=not isinstance(exc, CrmscoreError))
                    continue
                previous = slot.current.version if slot.current else None
                slot.current, slot.error = loaded, None  # the swap: requests from now on see it
                changed.append(slot.name)
                log.info("%s: serving version %s (was %s)", slot.name, version, previous or "none")
        return changed

    def ready(self) -> bool:
        return all(s.current is not None for s in self.slots.values())

    def start_polling(self, seconds: float) -> None:
        if seconds <= 0 or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(seconds):
                try:
                    self.refresh()
                except Exception:
                    log.exception("champion poll failed")

        self._thread = threading.Thread(target=loop, name="champion-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
