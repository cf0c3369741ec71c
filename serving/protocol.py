"""A header deadline for uvicorn's HTTP protocol: slow-header clients are closed.

uvicorn 0.54 times out only the idle gap *after* a response (``timeout_keep_alive``);
a client that connects and then sends its request line and headers a byte at a
time (slowloris) holds a connection, and its buffers, for as long as it likes.
BentoML builds uvicorn's ``Config`` itself without an ``http`` option, so uvicorn
picks its ``"auto"`` protocol (httptools when installed, else h11).
``install()`` points ``"auto"`` at ``HeaderDeadline``: uvicorn's own protocol
class plus one timer, armed when a connection opens and again after each
response, that closes the connection if no complete request head (request line
and headers) arrived within ``CRMSCORE_HEADER_TIMEOUT_SECONDS`` (5 s). A
request whose headers did arrive is not affected (its body and handling are
bounded by the guard's size limit and the service's request timeout).

``serving.service`` calls ``install()`` at import, which in a server worker is
before uvicorn loads its config; ``tests/test_reliability.py`` checks it over a
raw socket.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

HEADER_TIMEOUT_ENV = "CRMSCORE_HEADER_TIMEOUT_SECONDS"
#: A request head is a few hundred bytes; any real client sends it in one packet.
DEFAULT_HEADER_TIMEOUT_SECONDS = 5.0
PROTOCOL = "serving.protocol:HeaderDeadline"


def header_timeout() -> float:
    return float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT_SECONDS)


def _base() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


class HeaderDeadline(_base()):  # type: ignore[misc]
    """uvicorn's protocol; a connection with no complete request head in time is closed.

    Both of uvicorn's protocols set ``self.cycle`` to a new ``RequestResponseCycle``
    once a request's headers are complete: the timer closes the connection only if
    ``self.cycle`` is still the one it saw when it was armed.
    """

    _head_timer: asyncio.TimerHandle | None = None
    _armed_cycle: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._armed_cycle = self.cycle
        self._head_timer = self.loop.call_later(header_timeout(), self._head_deadline)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        idle = self.cycle is None or self.cycle.response_complete  # not a pipelined request at work
        if self.cycle is self._armed_cycle and idle and not self.transport.is_closing():
            self.transport.close()


def install() -> None:
    """Make uvicorn's ``"auto"`` HTTP protocol ``HeaderDeadline`` in this process."""
    import uvicorn.config

    uvicorn.config.HTTP_PROTOCOLS["auto"] = PROTOCOL
