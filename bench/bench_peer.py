"""The probabilistic peer at scale: BG/NBD + Gamma-Gamma MAP fit and predictions.

    .venv/bin/python bench/bench_peer.py [--customers 100000 1000000] [--write BENCHMARKS.md]

Each size runs in a fresh process (so its peak memory is its own): simulate the summary
statistics of N customers from a known BG/NBD + Gamma-Gamma (``tests/test_peer.py``'s
generator, days), then time ``features.peer.fit_peer`` twice (the first call compiles
the PyMC models once per process; a feature build pays that once and the warm figure per
snapshot) and ``predict_peer`` (P(alive), expected orders and spend over 365 days).
Peak memory is the process's maximum resident set (``resource.getrusage``).

Goal (issue 13): fit + predictions for 1M customers <= 60 s and <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("bench_peer")
TRUE = {"r": 0.6, "alpha": 20.0, "a": 0.8, "b": 3.0, "p": 4.0, "q": 5.0, "v": 300.0}


def one(customers: int) -> dict:
    from features.peer import fit_peer, predict_peer
    from tests.test_peer import simulate

    d = simulate(customers, **TRUE, seed=1)
    args = (d["frequency"], d["recency"], d["T"], d["monetary"])
    started = time.perf_counter()
    fit_peer(*args)
    first = time.perf_counter() - started
    started = time.perf_counter()
    fit = fit_peer(*args)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    out = predict_peer(fit, *args, horizon=365)
    predict = time.perf_counter() - started
    return {
        "customers": customers,
        "repeat": fit.repeat_customers,
        "first_fit": first,
        "fit": warm,
        "predict": predict,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "params": {k: round(v, 4) for k, v in vars(fit.params).items()},
        "expected_spend": float(out["peer_expected_spend"].sum()),
    }


def render(results: list[dict], load: tuple[float, float]) -> str:
    lines = [
        "## peer",
        "",
        (f"`bench/bench_peer.py`, {datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores "
         f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, load average "
         f"{load[0]:.1f} at start / {load[1]:.1f} at end (other jobs shared the machine; wall-clock, one run). "
         "BG/NBD + Gamma-Gamma by MAP (flat priors) with PyMC-Marketing 0.19.2 on simulated summary "
         f"statistics (true {', '.join(f'{k}={v}' for k, v in TRUE.items())}; days); one process per size."),
        "",
        "| customers (repeat) | fit | predictions (365 d) | fit + predictions | peak memory | goal | first fit in a process (compiles) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        total = r["fit"] + r["predict"]
        lines.append(
            f"| {r['customers']:,} ({r['repeat']:,}) | {r['fit']:.1f} s | {r['predict']:.1f} s | **{total:.1f} s** "
            f"| {r['peak_gb']:.2f} GB | ≤ 60 s, ≤ 4 GB at 1M | {r['first_fit']:.1f} s |"
        )
    lines.append("")
    lines.append("Fitted parameters: " + "; ".join(f"{r['customers']:,}: {r['params']}" for r in results))
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) only the "## peer" section of BENCHMARKS.md."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find("\n## peer\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + (text[end:] if end != -1 else "")
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--write", type=Path, default=None, help="update the '## peer' section of this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.one:
        print(json.dumps(one(args.one)))
        return
    load_start = os.getloadavg()[0]
    results = []
    root = Path(__file__).resolve().parent.parent
    for n in args.customers:
        done = subprocess.run([sys.executable, __file__, "--one", str(n)], check=True, capture_output=True,
                              text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        log.info("%s", results[-1])
    section = render(results, (load_start, os.getloadavg()[0]))
    log.info("results:\n%s", section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
