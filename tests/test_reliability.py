"""The real server under fuzzing, load, store faults and hostile clients (issue 14).

Two tests, each with its own ``crmscore serve --profile redis`` on a free port of
127.0.0.1 over the tiny world, its own private ``redis-server`` (faults never touch
the shared :6379) and a SQLite file as Feast's SQL registry (the shared PostgreSQL
is not touched either). See ``tests/conftest_serving.py`` (``LiveServer``).

The margins here are wide on purpose: CI runs this on a shared 2-core machine
beside the rest of the suite. The goals themselves (every request within 1 s
while the store stalls, /readyz red within 2 s and green within 5 s, 8,000 fuzz
cases, a 3-minute soak) are measured by ``bench/bench_reliability.py`` and
reported in BENCHMARKS.md and docs/reliability.md.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest_serving import Call, LiveServer, ServingWorld, fuzz, hammer, mixed_plan

pytest_plugins = ["tests.conftest_serving"]
pytestmark = [pytest.mark.slow, pytest.mark.redis]

#: CI's fuzz budget: valid + invalid cases per operation (the bench sends ≥ 2,000).
FUZZ_PER_MODE = 150
LOAD_SECONDS = 12.0
LOAD_CLIENTS = 32
STALL_SECONDS = 5.0
STALL_CLIENTS = 8  # the bench uses 16; fewer here leave CI's CPU to the server


def _needs_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")


@pytest.fixture()
def live(serving_world: ServingWorld, tmp_path: Path, request: pytest.FixtureRequest) -> LiveServer:
    _needs_redis()
    options = dict(getattr(request, "param", {}))
    server = LiveServer(serving_world, tmp_path, log_level=options.pop("log_level", "INFO"), env=options)
    request.addfinalizer(server.stop)
    server.start()
    return server


def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` as is and read the answer (paths with bytes no HTTP client would send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"connection: close" not in b"".join(chunks).lower():
                break
    return b"".join(chunks)


def _slow_client(port: int, trickle: bool, out: dict[str, float]) -> None:
    """Open a connection and send a request head a line every 0.5 s (``trickle``) or
    nothing at all; record when the server closed it (bounded to 30 s)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        if trickle:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)  # recv: b"" once the server closed, BlockingIOError while it waits
        for _ in range(60):
            try:
                if trickle:
                    s.sendall(b"X-Slow: 1\r\n")
                if s.recv(1, socket.MSG_DONTWAIT) == b"":
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            time.sleep(0.5)
    out["trickle" if trickle else "silent"] = time.monotonic() - started


# The store deadline (0.6 s) is for a stalled store, tested below with its default; here
# it is 2 s, because on a CPU-starved CI machine a healthy batch-100 read can take longer
# than 0.6 s (the bench saw 1 such 503 in 13,075 calls at saturation) and this test is
# about the server answering hostile input and load, not the deadline.
@pytest.mark.parametrize("live", [{"log_level": "DEBUG", "CRMSCORE_STORE_DEADLINE_SECONDS": "2"}], indirect=True,
                         ids=["debug"])
def test_fuzz_load_slow_clients_and_clean_logs(live: LiveServer, serving_world: ServingWorld,
                                                tmp_path: Path) -> None:
    # A Prometheus directory of its own (BentoML's default is shared by every instance
    # and emptied when one starts), and metrics served from it.
    dirs = list(tmp_path.glob("crmscore-prometheus-*"))
    assert len(dirs) == 1 and any(dirs[0].iterdir()), dirs
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    conn.request("GET", "/metrics")
    assert conn.getresponse().read().count(b"bentoml") > 0
    conn.close()

    # Slow-header clients, while the fuzz runs: closed within 10 s (the deadline is 5 s).
    closed: dict[str, float] = {}
    slow = [threading.Thread(target=_slow_client, args=(live.port, trickle, closed)) for trickle in (True, False)]
    for t in slow:
        t.start()

    # Hostile input for the log check: keys and PII as JSON keys and values, CR/LF and
    # terminal escapes in paths (encoded, and raw where HTTP lets them through).
    pii = serving_world.pii[:3]
    secret = live.score_key
    auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    hostile = [
        ("/churn_risk", {pii[0]: pii[1], "customer_ids": [pii[2]]}),
        ("/churn_risk", {"customer_ids": [secret, pii[0]]}),
        ("/lead_score", {"leads": [{"attributes": {"custom": {pii[0]: secret}}}]}),
        ("/lead_score", {"leads": [{"lead_id": pii[1], secret: 1}]}),
        ("/next_best_products", {"customer_ids": [f"{pii[0]}\r\nFORGED line"], "k": pii[2]}),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    for path, body in hostile:
        conn.request("POST", path, json.dumps(body), auth)
        response = conn.getresponse()
        assert response.status in (200, 400), (path, response.status)
        assert "error" in json.loads(response.read()) or response.status == 200
    for path in ("/churn_risk%0d%0aFORGED%20line", "/x%1b[31mRED", "/%0aFORGED"):
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 404 and "error" in json.loads(response.read())
    conn.close()
    for raw in (b"GET /a\x1b[2Jb HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /a\rFORGED HTTP/1.1\r\nHost: x\r\n\r\n"):
        answer = _raw(live.port, raw)
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404")) or answer == b"", answer[:80]

    # The published contract against the server: 0 server errors, 0 violations.
    report = fuzz(live.url, live.score_key, live.admin_key, FUZZ_PER_MODE)
    assert report.server_errors == 0, report.statuses
    assert report.failures == [], report.failures[:10]
    posts = {op: n for op, n in report.cases.items() if op.startswith("POST")}
    assert set(posts) == {f"POST {path}" for path in ("/churn_risk", "/lead_score", "/next_best_products",
                                                      "/customer_value", "/admin/models", "/admin/reload")}, posts
    assert min(posts.values()) >= 2 * FUZZ_PER_MODE, report.cases

    for t in slow:
        t.join(timeout=40)
    assert set(closed) == {"trickle", "silent"} and max(closed.values()) <= 10, closed

    # Load: 32 clients, mixed batch-1 / batch-100 over the three questions: all 2xx.
    calls = hammer(live.url, live.score_key, mixed_plan(serving_world), LOAD_CLIENTS, LOAD_SECONDS)
    codes = {c.status for c in calls}
    assert len(calls) > 100 and codes == {200}, {s: sum(c.status == s for c in calls) for s in codes}
    assert all("ok" in c.items for c in calls if c.path == "/churn_risk" and len(c.items) > 1)

    live.stop()
    text = live.log_text()
    assert "/next_best_products" in text and "400 /churn_risk" in text  # the lines were captured
    for key in (live.score_key, live.admin_key):
        assert key not in text, "an API key reached the server log"
    for value in serving_world.pii:
        assert value not in text, "a customer's name, email or phone reached the server log"
    lines = text.splitlines()
    assert not any(line.startswith("FORGED") or "\x1b" in line or "\r" in line for line in lines)


def _readyz_log(live: LiveServer, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    while not stop.is_set():
        out.append((time.monotonic(), live.readyz(timeout=3)[0]))
        stop.wait(0.1)


def _first(samples: list[tuple[float, int]], after: float, status: int) -> float | None:
    return next((t for t, s in samples if t >= after and s == status), None)


def test_store_stall_and_empty_restart(live: LiveServer, serving_world: ServingWorld) -> None:
    stop = threading.Event()
    readyz: list[tuple[float, int]] = []
    calls: list[Call] = []
    prober = threading.Thread(target=_readyz_log, args=(live, stop, readyz))
    clients = threading.Thread(target=lambda: calls.extend(
        hammer(live.url, live.score_key, mixed_plan(serving_world, big=20), STALL_CLIENTS, 120, stop=stop)))
    prober.start()
    clients.start()
    try:
        time.sleep(2.0)
        # The store stops answering (a partition, as SIGSTOP makes it) for 5 s.
        paused = time.monotonic()
        live.redis.pause()
        time.sleep(STALL_SECONDS)
        live.redis.resume()
        resumed = time.monotonic()
        deadline = resumed + 15
        while time.monotonic() < deadline and _first(readyz, resumed, 200) is None:
            time.sleep(0.2)
        time.sleep(2.0)

        # The store dies and comes back empty: red until it is materialized again.
        killed = time.monotonic()
        live.redis.kill()
        time.sleep(1.5)
        live.redis.start()
        restarted = time.monotonic()
        time.sleep(4.0)
        materializing = time.monotonic()
        live.materialize()
        materialized = time.monotonic()
        deadline = materialized + 15
        while time.monotonic() < deadline and _first(readyz, materialized, 200) is None:
            time.sleep(0.2)
        time.sleep(2.0)
    finally:
        stop.set()
        clients.join(timeout=60)
        prober.join(timeout=10)

    # While stalled: 503s (the breaker), never a 504 or a hang; each within 2.5 s.
    stalled = [c for c in calls if paused <= c.started < resumed]
    assert stalled and {c.status for c in stalled} <= {200, 503}, {c.status for c in stalled}
    assert sum(c.status == 503 for c in stalled) > len(stalled) / 2
    slowest = max(c.seconds for c in calls if c.started + c.seconds < killed)
    assert slowest <= 2.5, f"a request took {slowest:.2f}s while the store stalled"
    red = _first(readyz, paused, 503)
    green = _first(readyz, resumed, 200)
    assert red is not None and red - paused <= 4, readyz
    assert green is not None and green - resumed <= 10, readyz
    late = [(round(c.started - resumed, 2), c.error) for c in calls
            if green + 1 <= c.started and c.started + c.seconds < killed and c.status != 200]
    assert not late, (round(green - resumed, 2), late[:5])

    # Killed, then empty: /readyz red from 4 s after the kill until materialized, and no
    # item is ok without its features (not_found, or a 503 while the store is down).
    red = _first(readyz, killed, 503)
    assert red is not None and red - killed <= 4, readyz
    assert all(s == 503 for t, s in readyz if restarted + 2 <= t < materializing), readyz
    empty = [c for c in calls if restarted <= c.started and c.started + c.seconds < materializing]
    assert empty and {c.status for c in empty} <= {200, 503}
    assert not any("ok" in c.items or "stale_features" in c.items for c in empty)
    assert any(c.status == 200 and set(c.items) == {"not_found"} for c in empty)
    green = _first(readyz, materialized, 200)
    assert green is not None and green - materialized <= 10, readyz
    after = [c for c in calls if c.started >= green + 1]
    assert after and {c.status for c in after} == {200} and any("ok" in c.items for c in after)
