"""The real server under fuzzing, load, store faults, slow clients and a soak (issue 14).

    .venv/bin/python bench/bench_reliability.py [--fuzz-per-mode 1000] [--load-seconds 120]
        [--soak-seconds 180] [--soak-rps 100] [--write]

What runs: the tiny trained world of the serving tests (``tests/conftest_serving.py``,
700 customers, 500 leads, 25 products; built once under ``--home``), served by
``crmscore serve --profile redis`` on a free port of 127.0.0.1 with a private
``redis-server`` on another free port (faults go to it only: the shared :6379 is
never touched) and a SQLite file as Feast's SQL registry. Client and server share
the machine. In order:

1. fuzz: schemathesis' valid and invalid cases from ``/docs.json``, ``--fuzz-per-mode``
   of each per operation (goal: 0 server errors, 0 schema violations in ≥ 8,000 cases);
2. load: 32 clients, mixed batch-1 / batch-100 over the three questions (goal: 0 non-2xx);
3. store stalled (SIGSTOP ``--stall-seconds``) under 16 clients (goals: every request
   answered within 1 s, /readyz red within 2 s, green within 5 s of recovery), then killed
   and restarted empty (goals: /readyz red until materialized, 0 ``ok`` items without
   features);
4. slow clients: 50 connections sending a request head a line every 0.5 s, and 50 silent
   ones, while 8 clients score (goal: each closed within 10 s, scoring unaffected);
5. soak: ``--soak-rps`` requests a second for ``--soak-seconds``, the server's RSS sampled
   (goal: 0 errors, RSS growth < 5 % from the end of the first 20 s).

Prints the figures; ``--write`` replaces the ``## reliability`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.common import machine, write_section
from tests.conftest_serving import (
    Call,
    LiveServer,
    build_world,
    fuzz,
    hammer,
    load_world,
    mixed_plan,
    percentile,
)

PHASES = ("fuzz", "load", "faults", "slow", "soak")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def summary(calls: list[Call]) -> dict[str, Any]:
    seconds = [c.seconds for c in calls]
    codes: dict[int, int] = {}
    for c in calls:
        codes[c.status] = codes.get(c.status, 0) + 1
    return {"n": len(calls), "codes": codes, "p50": percentile(seconds, 50), "p99": percentile(seconds, 99),
            "max": max(seconds, default=float("nan"))}


def poll_readyz(live: LiveServer, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    while not stop.is_set():
        out.append((time.monotonic(), live.readyz(timeout=3)[0]))
        stop.wait(0.05)


def first(samples: list[tuple[float, int]], after: float, status: int) -> float | None:
    return next((t for t, s in samples if t >= after and s == status), None)


def rss_bytes(pid: int) -> int:
    """RSS of the server process tree (the CLI, BentoML's arbiter and the worker)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def worker_rss(pid: int) -> int:
    """RSS of the largest process of the tree: the service worker."""
    import psutil

    sizes = []
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return max(sizes)


def faults(live: LiveServer, world: Any, stall_seconds: float) -> dict[str, Any]:
    stop = threading.Event()
    readyz: list[tuple[float, int]] = []
    calls: list[Call] = []
    prober = threading.Thread(target=poll_readyz, args=(live, stop, readyz))
    clients = threading.Thread(target=lambda: calls.extend(
        hammer(live.url, live.score_key, mixed_plan(world, big=20), 16, 180, stop=stop)))
    prober.start()
    clients.start()
    try:
        time.sleep(3.0)
        paused = time.monotonic()
        live.redis.pause()
        time.sleep(stall_seconds)
        live.redis.resume()
        resumed = time.monotonic()
        deadline = resumed + 30
        while time.monotonic() < deadline and first(readyz, resumed, 200) is None:
            time.sleep(0.1)
        time.sleep(3.0)
        killed = time.monotonic()
        live.redis.kill()
        time.sleep(2.0)
        live.redis.start()
        restarted = time.monotonic()
        time.sleep(5.0)
        materializing = time.monotonic()
        live.materialize()
        materialized = time.monotonic()
        deadline = materialized + 30
        while time.monotonic() < deadline and first(readyz, materialized, 200) is None:
            time.sleep(0.1)
        time.sleep(3.0)
    finally:
        stop.set()
        clients.join(timeout=60)
        prober.join(timeout=10)
    stalled = [c for c in calls if paused <= c.started < resumed]
    red, green = first(readyz, paused, 503), first(readyz, resumed, 200)
    empty = [c for c in calls if restarted <= c.started and c.started + c.seconds < materializing]
    red_empty = [s for t, s in readyz if restarted + 1 <= t < materializing]
    green_after = first(readyz, materialized, 200)
    red_kill = first(readyz, killed, 503)
    before_kill = [c for c in calls if c.started + c.seconds < killed]
    return {
        "stall": summary(stalled),
        "stall_503": summary([c for c in stalled if c.status == 503]),
        "before_kill_max": max(c.seconds for c in before_kill),
        "red_after_pause": None if red is None else red - paused,
        "green_after_resume": None if green is None else green - resumed,
        "red_after_kill": None if red_kill is None else red_kill - killed,
        "empty": summary(empty),
        "empty_ok_items": sum(("ok" in c.items) or ("stale_features" in c.items) for c in empty),
        "empty_items": sum(len(c.items) for c in empty),
        "red_while_empty": f"{sum(s == 503 for s in red_empty)}/{len(red_empty)}",
        "materialize_seconds": materialized - materializing,
        "green_after_materialize": None if green_after is None else green_after - materialized,
        "all_ok_items": sum(c.items.count("ok") for c in calls),
    }


def slow_clients(live: LiveServer, world: Any, n: int = 50) -> dict[str, Any]:
    closed: list[float] = []
    lock = threading.Lock()

    def one(trickle: bool) -> None:
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", live.port), timeout=1) as s:
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
        finally:
            with lock:
                closed.append(time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(i % 2 == 0,)) for i in range(2 * n)]
    for t in threads:
        t.start()
    calls = hammer(live.url, live.score_key, mixed_plan(world, big=1), 8, 10)
    for t in threads:
        t.join(timeout=45)
    return {"closed_max": max(closed), "closed_min": min(closed), "n": len(closed), "calls": summary(calls)}


def soak(live: LiveServer, world: Any, seconds: float, rps: float) -> dict[str, Any]:
    assert live.proc is not None
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(5.0):
            samples.append((time.monotonic(), rss_bytes(live.proc.pid), worker_rss(live.proc.pid)))  # type: ignore[union-attr]

    sampler = threading.Thread(target=sample)
    started = time.monotonic()
    sampler.start()
    calls = hammer(live.url, live.score_key, mixed_plan(world), 16, seconds, rate=rps)
    stop.set()
    sampler.join()
    warm = [s for s in samples if s[0] - started >= 20] or samples
    base, end = warm[0], samples[-1]
    return {"calls": summary(calls), "rps": len(calls) / seconds, "rss_start": base[1], "rss_end": end[1],
            "rss_growth": end[1] / base[1] - 1, "worker_start": base[2], "worker_end": end[2],
            "worker_growth": end[2] / base[2] - 1, "rss_max": max(s[1] for s in samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/crmscore-bench-reliability"))
    parser.add_argument("--fuzz-per-mode", type=int, default=1000)
    parser.add_argument("--load-seconds", type=float, default=120.0)
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    parser.add_argument("--soak-seconds", type=float, default=180.0)
    parser.add_argument("--soak-rps", type=float, default=100.0)
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="a comma-separated subset of " + ",".join(PHASES) + "; the others' figures are "
                             "kept from the last run (HOME/results.json), with its date")
    parser.add_argument("--write", action="store_true", help="write the ## reliability section of BENCHMARKS.md")
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not set(phases) <= set(PHASES):
        parser.error(f"--phases: expected a subset of {','.join(PHASES)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    home = args.home.absolute()
    if not (home / "READY").exists():
        build_world(home)
        (home / "READY").touch()
    world = load_world(home)
    where = machine()
    run_dir = home / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir()
    live = LiveServer(world, run_dir)
    saved = home / "results.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() and set(phases) != set(PHASES) else {}
    try:
        t = time.monotonic()
        live.start()
        results["start_seconds"] = time.monotonic() - t
        if "fuzz" in phases:
            t = time.monotonic()
            report = fuzz(live.url, live.score_key, live.admin_key, args.fuzz_per_mode, seed=None)
            results["fuzz"] = {"cases": sum(report.cases.values()), "per_op": report.cases,
                               "statuses": report.statuses, "server_errors": report.server_errors,
                               "failures": report.failures, "seconds": time.monotonic() - t,
                               "per_mode": args.fuzz_per_mode}
        if "load" in phases:
            calls = hammer(live.url, live.score_key, mixed_plan(world), 32, args.load_seconds)
            results["load"] = {**summary(calls), "rps": len(calls) / args.load_seconds, "seconds": args.load_seconds}
        if "faults" in phases:
            results["faults"] = {**faults(live, world, args.stall_seconds), "stall_seconds": args.stall_seconds}
        if "slow" in phases:
            results["slow"] = slow_clients(live, world)
        if "soak" in phases:
            results["soak"] = {**soak(live, world, args.soak_seconds, args.soak_rps), "seconds": args.soak_seconds,
                               "target_rps": args.soak_rps}
        for phase in phases:
            results.setdefault("measured", {})[phase] = where
            print(phase, json.dumps(results[phase], default=str), flush=True)
    finally:
        live.stop()
    text = live.log_text()
    results["log_clean"] = (live.score_key not in text and live.admin_key not in text
                            and not any(v in text for v in world.pii)) and results.get("log_clean", True)
    print("log clean", results["log_clean"])
    saved.write_text(json.dumps(results, default=str, indent=1))
    if args.write:
        write_section("reliability", render(results))


def fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f} s"


def render(r: dict[str, Any]) -> str:
    f, ld, fa, sl, so = r["fuzz"], r["load"], r["faults"], r["slow"], r["soak"]
    grouped: dict[str, list[str]] = {}
    for phase, where in r["measured"].items():
        grouped.setdefault(where, []).append(phase)
    when = "\n".join(f"- {', '.join(phases)}: {where}" for where, phases in grouped.items())
    notes = "\n".join(f"- {note}" for note in r.get("notes", []))
    return f"""
`bench/bench_reliability.py --fuzz-per-mode {f['per_mode']} --load-seconds {ld['seconds']:g} \
--stall-seconds {fa['stall_seconds']:g} --soak-seconds {so['seconds']:g} --soak-rps {so['target_rps']:g}`:
`crmscore serve --profile redis` (1 worker, 4 request threads) over the serving tests' tiny world
(700 customers, 500 leads, 25 products), a private `redis-server` as the online store, client and
server on the same machine, 127.0.0.1. Machine and time of each phase (the machine is shared: other
jobs ran beside it):

{when}

| what | goal | measured |
|---|---|---|
| fuzz (schemathesis, valid + invalid cases from /docs.json) | 0 server errors, 0 violations in ≥ 8,000 | {f['cases']:,} cases in {f['seconds']:.0f} s: {f['server_errors']} server errors, {len(f['failures'])} check failures; statuses {f['statuses']} |
| load, 32 clients, batch 1 / 100 mixed, {ld['seconds']:g} s | 0 non-2xx | {ld['n']:,} calls, {ld['rps']:.0f}/s, statuses {ld['codes']}, p50 {ms(ld['p50'])}, p99 {ms(ld['p99'])} |
| store stalled {fa['stall_seconds']:g} s under 16 clients: answers | every one within 1 s | {fa['stall']['n']} calls, statuses {fa['stall']['codes']}; 503 p99 {ms(fa['stall_503']['p99'])}, slowest {ms(fa['stall']['max'])} |
| /readyz red after the stall began | ≤ 2 s | {fmt(fa['red_after_pause'])} |
| /readyz green after the store answered again | ≤ 5 s | {fmt(fa['green_after_resume'])} |
| store killed, restarted empty: /readyz | red until materialized | red {fmt(fa['red_after_kill'])} after the kill; red in {fa['red_while_empty']} samples while empty; green {fmt(fa['green_after_materialize'])} after materialize ({fa['materialize_seconds']:.1f} s) |
| items answered while the store was empty | 0 `ok` | {fa['empty_ok_items']} of {fa['empty_items']} items ok or stale ({fa['empty']['n']} calls, statuses {fa['empty']['codes']}) |
| 50 slow-header + 50 silent connections | each closed within 10 s | closed after {sl['closed_min']:.1f}–{sl['closed_max']:.1f} s; meanwhile 8 clients: {sl['calls']['n']} calls, statuses {sl['calls']['codes']}, p99 {ms(sl['calls']['p99'])} |
| soak {so['target_rps']:g} rps for {so['seconds']:g} s | 0 errors, RSS growth < 5 % | {so['calls']['n']:,} calls ({so['rps']:.0f}/s), statuses {so['calls']['codes']}, p99 {ms(so['calls']['p99'])}; server tree RSS {so['rss_start'] / 2**20:.0f} → {so['rss_end'] / 2**20:.0f} MiB ({so['rss_growth']:+.1%}), worker {so['worker_start'] / 2**20:.0f} → {so['worker_end'] / 2**20:.0f} MiB ({so['worker_growth']:+.1%}) |
| server log | no key, no PII | {'clean' if r['log_clean'] else 'NOT CLEAN'} |

{notes}
"""


if __name__ == "__main__":
    main()
