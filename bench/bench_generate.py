"""Benchmark ``crmscore generate``: wall time, CPU time and peak memory at 100k and 1M customers.

Each world is generated in its own child process (so imports and peak memory
are those of a real run), timed from the outside, and its peak RSS is read from
``os.wait4`` (that child's own rusage). The figures are printed and written to
the "## generate" section of BENCHMARKS.md, replacing only that section.

    .venv/bin/python bench/bench_generate.py            # 100k and 1M
    .venv/bin/python bench/bench_generate.py --skip-1m  # 100k only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("bench_generate")

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
SECTION = "## generate"
#: Budgets from the issue: 100k customers in 15 s; 1M in 150 s and 6 GB.
BUDGET_SECONDS = {100_000: 15.0, 1_000_000: 150.0}
BUDGET_RSS_GB = {1_000_000: 6.0}

_CHILD = """
import json, sys
from pathlib import Path
from crmdata.synth import WorldConfig, generate_world
customers, seed, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
summary = generate_world(WorldConfig(customers=customers, leads=customers // 2, seed=seed), out)
print(json.dumps(summary.model_dump()))
"""


@dataclass
class Run:
    customers: int
    wall_s: float
    cpu_s: float
    peak_rss_gb: float
    generator_s: float
    rows: dict[str, int]
    churn_rate: float
    churn_auc: float
    conversion_rate: float
    conversion_auc: float


def run_one(customers: int, seed: int, workdir: Path) -> Run:
    """Generate one world in a child process and measure it."""
    out = workdir / f"lake-{customers}"
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(customers), str(seed), str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"generate {customers} failed with exit code {child.returncode}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return Run(
        customers=customers,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_gb=usage.ru_maxrss * 1024 / 1e9,  # ru_maxrss is in KiB on Linux
        generator_s=summary["seconds"],
        rows=summary["rows"],
        churn_rate=summary["churn"]["rate"],
        churn_auc=summary["churn"]["oracle_auc"],
        conversion_rate=summary["conversion"]["rate"],
        conversion_auc=summary["conversion"]["oracle_auc"],
    )


def machine() -> str:
    with open("/proc/meminfo") as handle:
        kib = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    return f"{os.cpu_count()} cores (nproc), {kib / 1024**2:.0f} GiB RAM, {platform.system()} {platform.machine()}"


def render(runs: list[Run], seed: int, load: tuple[float, float, float]) -> str:
    lines = [
        SECTION,
        "",
        (
            "What: `crmscore generate --customers N --leads N/2 --products 200 --seed "
            f"{seed}` (the synthetic world, crmdata/synth), end to end: simulation, parquet lake, truth."
        ),
        "How: `.venv/bin/python bench/bench_generate.py`; each size runs in its own child process;",
        "wall time is measured around the process (imports included), CPU time and peak RSS come",
        "from that child's rusage (`os.wait4`).",
        (
            f"Machine: {machine()}; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
            " (the machine is shared: a wall time far above the CPU time means other work competed"
            " for the 2 cores; the generator itself keeps about 1.3 cores busy)."
        ),
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        (
            "| customers | wall s | CPU s | peak RSS GB | budget | orders | interactions | lead activities "
            "| churn 90d | churn AUC | conversion 60d | conversion AUC |"
        ),
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        budget = f"≤ {BUDGET_SECONDS.get(r.customers, float('nan')):.0f} s"
        if r.customers in BUDGET_RSS_GB:
            budget += f", ≤ {BUDGET_RSS_GB[r.customers]:.0f} GB"
        lines.append(
            f"| {r.customers:,} | {r.wall_s:.1f} | {r.cpu_s:.1f} | {r.peak_rss_gb:.2f} | {budget} "
            f"| {r.rows['orders']:,} | {r.rows['interactions']:,} | {r.rows['lead_activities']:,} "
            f"| {r.churn_rate:.1%} | {r.churn_auc:.3f} | {r.conversion_rate:.1%} | {r.conversion_auc:.3f} |"
        )
    return "\n".join(lines) + "\n"


def update_benchmarks(section: str, path: Path = BENCHMARKS) -> None:
    """Replace the "## generate" section of BENCHMARKS.md in place (or append it)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-1m", action="store_true", help="only the 100k world")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    sizes = [100_000] if args.skip_1m else [100_000, 1_000_000]
    load = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        for customers in sizes:
            run = run_one(customers, args.seed, Path(tmp))
            log.info(
                "%9d customers: wall %.1f s, CPU %.1f s, peak RSS %.2f GB (budget %.0f s)",
                run.customers,
                run.wall_s,
                run.cpu_s,
                run.peak_rss_gb,
                BUDGET_SECONDS[customers],
            )
            runs.append(run)
    section = render(runs, args.seed, load)
    sys.stdout.write(section)
    if not args.no_write:
        update_benchmarks(section)
        log.info("updated %s", BENCHMARKS)


if __name__ == "__main__":
    main()
