"""API keys and the HTTP guard in front of the service.

Keys are random 256-bit tokens, shown once by ``crmscore keys create`` and
stored only as SHA-256 hashes (a fast hash is enough for random tokens: there
is no password to brute-force) in ``HOME/keys/api_keys.json``, or the file named
by ``CRMSCORE_KEYS_FILE``. The guard is an ASGI middleware:

* only the service's routes exist: any other path is a 404 and a wrong method a
  405 (so no redirect is ever built from the ``Host`` header, as Starlette does
  for a trailing slash);
* health, metrics and the OpenAPI docs stay open;
* ``/admin/*`` needs an ``admin`` key, every other path a ``score`` or ``admin`` key:
  401 without a valid ``Authorization: Bearer <key>``, 403 with the wrong scope,
  400 with more than one ``Authorization`` header;
* API calls must be ``application/json`` (so none of BentoML's file, multipart,
  URL-download or pickle paths is reachable) and at most ``max_body_bytes``;
* the body is validated against the route's request model here, so an invalid
  one is a 400 in the one error schema (``serving.schemas.ErrorResponse``) and a
  single log line of counts and kinds: BentoML would log the traceback, whose
  messages name the keys a client sent.

Every answer here has the ``ErrorResponse`` body. Nothing here logs a key, a
header or any part of a body: a rejected call is logged by path (control
characters escaped) and reason only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from crmdata.errors import CrmscoreError

log = logging.getLogger(__name__)

KEYS_FILE_ENV = "CRMSCORE_KEYS_FILE"
KEYS_FILE = "api_keys.json"
MAX_BODY_ENV = "CRMSCORE_MAX_BODY_BYTES"
#: 1,000 new leads with every attribute fit in well under 1 MiB.
DEFAULT_MAX_BODY_BYTES = 1 << 20
KEY_PREFIX = "crm_"
#: Paths anyone may call: probes, Prometheus and the API docs.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/schema.json", "/"})
OPEN_PREFIXES = ("/static_content/", "/assets/")
#: The open paths are read with GET (HEAD too, for probes that use it).
OPEN_METHODS = frozenset({"GET", "HEAD"})
ADMIN_PREFIX = "/admin/"
#: How often the guard looks at the key file's mtime (keys created later apply without a restart).
RECHECK_SECONDS = 2.0

Scope = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[MutableMapping[str, Any]]],
                  Callable[[MutableMapping[str, Any]], Awaitable[None]]], Awaitable[None]]


class KeyScope(StrEnum):
    SCORE = "score"
    ADMIN = "admin"
    #: GET /report only (the CRM report page); an admin key may read it too.
    REPORT = "report"


#: GET paths behind a key, and the scope each needs besides admin (serving/report.py).
KEYED_GET_PATHS: dict[str, KeyScope] = {"/report": KeyScope.REPORT}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def keys_file(keys_dir: Path) -> Path:
    """The key-hash file: ``$CRMSCORE_KEYS_FILE`` if set, else ``keys_dir/api_keys.json``."""
    return Path(os.environ.get(KEYS_FILE_ENV) or keys_dir / KEYS_FILE)


@dataclass(frozen=True)
class StoredKey:
    id: str  # the first 8 hex digits of the hash: lets people name a key without its value
    scope: KeyScope
    sha256: str
    created_at: str
    note: str = ""


def read_keys(path: Path) -> list[StoredKey]:
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
        return [StoredKey(**{**row, "scope": KeyScope(row["scope"])}) for row in rows]
    except (ValueError, TypeError, KeyError) as exc:
        raise CrmscoreError(f"{path}: not a crmscore key file ({exc.__class__.__name__})") from None


def create_key(path: Path, scope: KeyScope | str, note: str = "") -> tuple[str, StoredKey]:
    """Make a new key, append its hash to ``path`` and return (key, stored row).

    The key itself is returned once and never written anywhere.
    """
    scope = KeyScope(scope)
    key = f"{KEY_PREFIX}{scope.value}_{secrets.token_urlsafe(32)}"
    digest = hash_key(key)
    row = StoredKey(id=digest[:8], scope=scope, sha256=digest,
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"), note=note)
    rows = [*read_keys(path), row]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic replace, readable by the owner only: the hashes are not secret, but no one
    # else should be able to add a key.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
    with os.fdopen(fd, "w") as out:
        json.dump([{**vars(r), "scope": r.scope.value} for r in rows], out, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key, row


class KeyRing:
    """The key hashes in force, re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._scopes: dict[str, KeyScope] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self.reload()

    def reload(self) -> int:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self._scopes = {k.sha256: k.scope for k in read_keys(self.path)}
            self._mtime = mtime
            log.info("API keys: %d in force (%s)", len(self._scopes), self.path)
            if not self._scopes:
                log.warning("no API keys in %s: every scoring call gets 401; "
                            "create one with `crmscore keys create --scope score`", self.path)
        self._checked = time.monotonic()
        return len(self._scopes)

    def scope_of(self, key: str) -> KeyScope | None:
        if time.monotonic() - self._checked > RECHECK_SECONDS:
            try:
                self.reload()
            except CrmscoreError as exc:  # a half-written file: keep the keys we have
                log.warning("API keys not reloaded: %s", exc)
                self._checked = time.monotonic()
        return self._scopes.get(hash_key(key))

    def __len__(self) -> int:
        return len(self._scopes)


def escape(text: str, limit: int = 200) -> str:
    """``text`` safe for a log line: control characters as escapes (no forged lines, no
    terminal sequences), cut to ``limit`` characters."""
    cut = text[:limit]
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    return safe + ("..." if len(text) > limit else "")


def safe_errors(exc: ValidationError, known: frozenset[str]) -> list[dict[str, Any]]:
    """Pydantic's errors without anything the client made up: locations keep field names
    of the schema (``known``) and list positions, any other key (an unknown field, a
    custom attribute's name) reads ``*``; messages are pydantic's, which never quote the
    input of a model with ``hide_input_in_errors``."""
    return [{"loc": [x if isinstance(x, int) or x in known else "*" for x in e["loc"]],
             "type": e["type"], "msg": e["msg"]} for e in exc.errors(include_input=False, include_url=False,
                                                                    include_context=False)]


def field_names(model: type[BaseModel]) -> frozenset[str]:
    """Every field name of ``model`` and of the models inside it."""
    names: set[str] = set()
    pending: list[Any] = [model.model_json_schema()]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            names.update(node.get("properties", {}))
            pending += node.values()
        elif isinstance(node, list):
            pending += node
    return frozenset(names)


def required_scope(path: str) -> KeyScope | None:
    """None for open paths, else the scope a key needs."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path in KEYED_GET_PATHS:
        return KEYED_GET_PATHS[path]
    return KeyScope.ADMIN if path.startswith(ADMIN_PREFIX) else KeyScope.SCORE


class ApiGuard:
    """ASGI middleware: API-key auth, JSON-only bodies and a body-size limit.

    Options are read from the environment when the server builds its middleware
    stack (at start, never at import): ``keys_path`` defaults to the workspace's
    key file and ``max_body_bytes`` to ``$CRMSCORE_MAX_BODY_BYTES`` or 1 MiB.
    """

    def __init__(self, app: Scope, keys_path: Path | None = None, max_body_bytes: int | None = None,
                 routes: Mapping[str, type[BaseModel]] | None = None) -> None:
        from crmdata.workspace import Workspace
        from serving.schemas import API_ROUTES

        self.app = app
        self.keys = KeyRing(keys_path or keys_file(Workspace.from_env().keys))
        self.max_body_bytes = max_body_bytes or int(os.environ.get(MAX_BODY_ENV) or DEFAULT_MAX_BODY_BYTES)
        #: POST path -> its request model.
        self.routes = API_ROUTES if routes is None else routes
        self._known = {path: field_names(m) for path, m in self.routes.items()}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method = scope.get("method", "GET")
        if path.startswith(OPEN_PREFIXES):  # the docs UI's files
            await self.app(scope, receive, send)
            return
        allowed = (OPEN_METHODS if path in OPEN_PATHS or path in KEYED_GET_PATHS
                   else frozenset({"POST"}) if path in self.routes else None)
        if allowed is None:
            await _reply(send, 404, "no such endpoint; see /docs.json")
            return
        if method not in allowed:
            await _reply(send, 405, f"use {' or '.join(sorted(allowed))} on this endpoint",
                         {b"allow": ", ".join(sorted(allowed)).encode()})
            return
        needed = required_scope(path)
        if needed is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if sum(name == b"authorization" for name, _ in scope["headers"]) > 1:
            # Proxies and frameworks disagree on which of several wins: refuse to guess.
            log.info("400 %s: more than one Authorization header", path)
            await _reply(send, 400, "send exactly one Authorization header")
            return
        key = _bearer(headers.get(b"authorization"))
        if key is None:
            log.info("401 %s: no bearer key", path)
            await _reply(send, 401, "missing API key: send 'Authorization: Bearer <key>'",
                         {b"www-authenticate": b"Bearer"})
            return
        granted = self.keys.scope_of(key)
        if granted is None:
            log.info("401 %s: unknown key", path)
            await _reply(send, 401, "invalid API key", {b"www-authenticate": b"Bearer"})
            return
        if needed == KeyScope.ADMIN and granted != KeyScope.ADMIN:
            log.info("403 %s: a %s key on an admin path", path, granted.value)
            await _reply(send, 403, f"this key has scope '{granted.value}'; {path} needs 'admin'")
            return
        if granted not in (needed, KeyScope.ADMIN):
            log.info("403 %s: a %s key on a %s path", path, granted.value, needed.value)
            await _reply(send, 403, f"this key has scope '{granted.value}'; {path} needs '{needed.value}' or 'admin'")
            return
        if scope.get("method") == "POST":
            media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if media != b"application/json":
                await _reply(send, 415, "send the request body as application/json")
                return
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                await _reply(send, 413, f"request body larger than {self.max_body_bytes} bytes")
                return
            # Read the body here (bounded) so a chunked upload without a length cannot
            # exceed the limit either; the app then reads the buffered copy.
            body, complete = await _read_body(receive, self.max_body_bytes)
            if not complete:
                await _reply(send, 413, f"request body larger than {self.max_body_bytes} bytes")
                return
            try:
                self.routes[path].model_validate_json(body or b"{}")  # as BentoML does, for an empty body too
            except ValidationError as exc:
                errors = safe_errors(exc, self._known[path])
                kinds = sorted({e["type"] for e in errors})
                log.info("400 %s: %d validation error(s) in %d bytes: %s", path, len(errors), len(body),
                         ", ".join(kinds))
                await _reply(send, 400, f"{len(errors)} validation error(s) in the request body", detail=errors)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


def _bearer(value: bytes | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as Starlette expects

    return replay


async def _reply(send: Any, status: int, message: str, extra: dict[bytes, bytes] | None = None,
                 detail: list[dict[str, Any]] | None = None) -> None:
    body = json.dumps({"error": message, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
