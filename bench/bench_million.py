"""The whole flow at 100k, 300k and 1M customers: `crmscore pipeline run --world N`.

Each size runs in a fresh home, in its own child process (what a user runs: the CLI,
imports included), timed from outside; its peak RSS comes from ``os.wait4`` and the
per-step table from the run's own step records (``--json``: seconds and the peak RSS
when each step ended). Then, on the same home, the steps that touch the online store
(apply, materialize, score all, push scores) run again with ``--profile redis``
against a private ``redis-server`` on a free port (never the shared :6379) and a
throw-away SQLite Feast registry. Figures are printed and written to the "million
customers" section of BENCHMARKS.md.

    .venv/bin/python bench/bench_million.py                       # 100k, 300k, 1M
    .venv/bin/python bench/bench_million.py --sizes 100000 --keep /tmp/m
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_features import private_redis
from bench.common import machine, write_section
from crmdata.workspace import MLFLOW_ENV

log = logging.getLogger("bench_million")

ROOT = Path(__file__).resolve().parents[1]
CRMSCORE = ROOT / ".venv" / "bin" / "crmscore"
SECTION = "million customers"
BUDGET_SECONDS, BUDGET_GB = 15 * 60, 12.0
REDIS_STEPS = ("apply", "materialize", "score all", "push scores")

_REDIS_CHILD = """
import json, sys
from crmdata.workspace import Workspace
from pipelines.pipeline import STEPS, Source, run_pipeline
ws = Workspace.from_env(sys.argv[1])
steps = tuple(s for s in STEPS if s[0] in {steps!r})
records = run_pipeline(ws, Source(lake=ws.lake), force=True, profile="redis", steps=steps)
print(json.dumps([r.model_dump(mode="json") for r in records]))
"""


@dataclass
class Run:
    customers: int
    profile: str
    wall: float
    cpu: float
    peak_gb: float
    steps: list[dict] = field(default_factory=list)
    #: The machine line (cores, memory, date, load) when this run started.
    machine: str = ""


def _child(cmd: list[str], env: dict[str, str], log_path: Path) -> tuple[float, float, float, str]:
    started = time.perf_counter()
    with log_path.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: see {log_path}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20, out


def run_size(customers: int, work: Path, reuse: bool) -> list[Run]:
    saved = work / f"runs-{customers}.json"
    if reuse and saved.exists():
        log.info("%d customers: reusing %s", customers, saved)
        return [Run(**r) for r in json.loads(saved.read_text())]
    runs = _measure(customers, work)
    saved.write_text(json.dumps([vars(r) for r in runs]))
    return runs


def _measure(customers: int, work: Path) -> list[Run]:
    home = work / f"home-{customers}"
    # Its own MLflow store: sizes must not gate against (or serve) each other's models.
    env = {**os.environ, "CRMSCORE_HOME": str(home), MLFLOW_ENV: f"sqlite:///{home / 'mlflow.db'}"}
    log.info("%d customers: pipeline run (embedded profile) …", customers)
    started_on = machine()
    wall, cpu, peak, out = _child([str(CRMSCORE), "pipeline", "run", "--world", str(customers), "--force", "--json"],
                                  env, work / f"local-{customers}.log")
    runs = [Run(customers, "local", wall, cpu, peak, json.loads(out), started_on)]
    log.info("%d customers: %.0f s wall, %.0f s CPU, %.1f GB", customers, wall, cpu, peak)
    with private_redis(work) as url:
        if url is None:
            log.warning("no redis-server: the redis profile is not measured")
            return runs
        env = {**env, "CRMSCORE_REDIS_URL": url, "CRMSCORE_REGISTRY_URL": f"sqlite:///{home / 'redis-registry.db'}"}
        code = _REDIS_CHILD.replace("{steps!r}", repr(set(REDIS_STEPS)))
        wall, cpu, peak, out = _child([sys.executable, "-c", code, str(home)], env, work / f"redis-{customers}.log")
        runs.append(Run(customers, "redis", wall, cpu, peak, json.loads(out.strip().splitlines()[-1])))
        log.info("%d customers, redis steps: %.0f s wall, %.1f GB", customers, wall, peak)
    return runs


def render(runs: list[Run], started_on: str) -> str:
    sizes = sorted({r.customers for r in runs})
    local = {r.customers: r for r in runs if r.profile == "local"}
    redis = {r.customers: r for r in runs if r.profile == "redis"}
    lines = [
        ("What: `crmscore pipeline run --world N --force` (synthetic world, validate, features, apply, materialize, "
        "train churn/lead/nbp/clv, score all with reasons for every row, push scores), embedded profile; then "
        "apply/materialize/score all/push scores again with `--profile redis` (private redis-server, SQLite registry)."),
        ("How: `.venv/bin/python bench/bench_million.py`; one child process per run, wall time from outside, CPU and "
        "peak RSS from `os.wait4`; per-step seconds and peak RSS (so far) from the run's own `--json` records."),
        f"Machine: {', '.join(started_on.split(', ', 3)[:3])}. Each size's run "
        "started at: " + "; ".join(f"{n:,}: {local[n].machine.split(', ', 3)[-1]}" for n in sizes)
        + ". Other jobs shared the machine when the load is high: wall time then exceeds the work (CPU s).",
        "",
        "| customers | wall | CPU s | peak RSS | goal (1M) | met |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for n in sizes:
        r = local[n]
        met = "yes" if r.wall <= BUDGET_SECONDS and r.peak_gb <= BUDGET_GB else "**no**"
        lines.append(f"| {n:,} | {r.wall / 60:.1f} min | {r.cpu:.0f} | {r.peak_gb:.1f} GB | ≤ 15 min, ≤ 12 GB | "
                     f"{met if n == 1_000_000 else '—'} |")
    names = [s["name"] for s in local[sizes[-1]].steps]
    header = " | ".join(f"{n:,}" for n in sizes)
    lines += ["", "Per step, embedded profile (seconds; peak RSS so far in GB, at the largest size):", "",
              f"| step | {header} | growth ×{sizes[-1] // sizes[0]} | CPU s at {sizes[-1]:,} | peak GB |",
              "|---|" + "---:|" * (len(sizes) + 3)]
    for name in names:
        secs = [next((s["seconds"] for s in local[n].steps if s["name"] == name), float("nan")) for n in sizes]
        growth = secs[-1] / secs[0] if secs[0] else float("nan")
        last = next(s for s in local[sizes[-1]].steps if s["name"] == name)
        cpu = f"{last['cpu_seconds']:.0f}" if last.get("cpu_seconds") is not None else "—"
        lines.append(f"| {name} | " + " | ".join(f"{s:.1f}" for s in secs)
                     + f" | {growth:.1f} | {cpu} | {last.get('peak_rss_gb') or ''} |")
    if redis:
        lines += ["", "Redis profile, the same homes (seconds):", "", f"| step | {header} |",
                  "|---|" + "---:|" * len(sizes)]
        for name in REDIS_STEPS:
            secs = [next((s["seconds"] for s in redis[n].steps if s["name"] == name), float("nan")) if n in redis
                    else float("nan") for n in sizes]
            lines.append(f"| {name} | " + " | ".join(f"{s:.1f}" for s in secs) + " |")
    lines += ["", "Step details at the largest size:", ""]
    lines += [f"- {s['name']}: {s['detail']}" for s in local[sizes[-1]].steps]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--reuse", action="store_true",
                        help="take a size's figures from an earlier run in --keep (runs-N.json) instead of rerunning")
    args = parser.parse_args()
    started_on = machine()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-million-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in (int(s) for s in args.sizes.split(",")):
            runs += run_size(n, work, args.reuse)
            body = render(runs, started_on)
            print(body)
            if not args.no_write:
                write_section(SECTION, body)


if __name__ == "__main__":
    main()
