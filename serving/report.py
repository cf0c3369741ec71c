"""``GET /report``: the latest CRM report page, as ``crmscore report`` last wrote it.

The report is built offline (``pipelines/report``) and written atomically to
``HOME/reports/latest.html`` (and ``latest.json``); the service only reads that file, so a
request never computes anything and a report being rewritten is never seen half-written.
``ReportEndpoint`` is an ASGI middleware that answers ``GET``/``HEAD /report`` and passes
everything else on; it sits *inside* ``serving.auth.ApiGuard``, which checks the key
(``report`` or ``admin`` scope) first. No report yet is a 404 with the service's one error
body (``{"error": ..., "detail": null}``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from crmdata.workspace import Workspace

log = logging.getLogger(__name__)

REPORT_PATH = "/report"
REPORTS_DIR = "reports"
LATEST_HTML = "latest.html"
LATEST_JSON = "latest.json"
NO_REPORT = "no report yet: run `crmscore report` to write one"
#: The page is self-contained: the browser may fetch nothing (no script, font, image or frame).
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def reports_dir(ws: Workspace) -> Path:
    """Where ``crmscore report`` writes (the workspace's ``reports`` folder)."""
    return ws.home / REPORTS_DIR


def latest_html(ws: Workspace) -> Path:
    return reports_dir(ws) / LATEST_HTML


def latest_json(ws: Workspace) -> Path:
    return reports_dir(ws) / LATEST_JSON


def read_latest(ws: Workspace) -> bytes | None:
    """The latest report page, or None when none has been written (or it cannot be read)."""
    try:
        return latest_html(ws).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("report: cannot read the latest page (%s)", type(exc).__name__)
        return None


class ReportEndpoint:
    """ASGI middleware answering ``GET``/``HEAD /report`` from the workspace (read per request:
    a new report shows without a restart)."""

    def __init__(self, app: Any, workspace: Workspace | None = None) -> None:
        self.app = app
        self.workspace = workspace

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != REPORT_PATH or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        ws = self.workspace or Workspace.from_env()
        page = read_latest(ws)
        head = scope.get("method") == "HEAD"
        if page is None:
            body = json.dumps({"error": NO_REPORT, "detail": None}).encode()
            await _send(send, 404, b"application/json", body, head)
            return
        await _send(send, 200, b"text/html; charset=utf-8", page, head,
                    [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                     (b"cache-control", b"no-cache")])


async def _send(send: Any, status: int, media: bytes, body: bytes, head: bool,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", media), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
