"""Reasons (exact TreeSHAP) against a bare ``Booster.predict``: LightGBM's ``pred_contrib`` and
the candidates of ``training/explain.py``, on the churn and clv champions of a synthetic world.

    .venv/bin/python bench/bench_reasons.py [--home DIR] [--rows 100000] [--subset 10000] [--repeat 3]
                                            [--skip-end-to-end] [--write]

* A 20k-customer world (seed 1) is generated and its churn and clv champions trained once
  (in ``--home``, default /tmp/crmscore-bench/reasons).
* Rows: the real feature rows of each model's population at the newest snapshot, encoded as
  scoring encodes them, drawn with replacement up to ``--rows``.
* Side by side, interleaved per repeat (the machine is shared; its load drifts), one thread:
  bare predict and the chosen explainer on all rows, ``pred_contrib``, the direct formula (no
  tables) and tables to depth 8 on the first ``--subset`` rows (they cost more); wall and CPU time;
  then both threads of the machine for predict and the chosen explainer. Medians of
  ``--repeat``; ratios are per row against the bare predict of the same repeat.
* Max |diff| against ``pred_contrib`` over the subset (tests/test_explain.py checks every row of
  its boosters, and of the tiny world's churn champion, within 1e-6).
* Compile time in a fresh numba cache (a new machine's first explainer) and with the cache;
  precompute time and memory of each explainer.
* End to end: ``score churn`` and ``score clv`` with ``--reasons none`` and ``all``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, median, use_home, write_section

log = logging.getLogger("bench_reasons")

COMPILE_PROBE = """
import time, numpy as np, lightgbm as lgb
rng = np.random.default_rng(0)
x = rng.normal(size=(300, 4))
booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 7}, lgb.Dataset(x, x[:, 0] > 0), 3)
started = time.perf_counter()
import training.explain
imported = time.perf_counter()
training.explain.TreeExplainer.of(booster)
print(imported - started, time.perf_counter() - imported)
"""


def trained_world(home: Path) -> Any:
    ws = use_home(home)
    if not (home / ".trained").exists():
        from crmdata.synth import WorldConfig, generate_world
        from pipelines.train import train_task
        from training.tasks import CHURN, VALUE

        log.info("generating and training the 20k world in %s", home)
        generate_world(WorldConfig(customers=20_000, leads=10_000, products=200, seed=1), ws.lake)
        train_task(ws, CHURN)
        train_task(ws, VALUE, window_days=VALUE.window_days)
        (home / ".trained").touch()
    return ws


def feature_rows(ws: Any, task: str, spec: Any, encoder: Any, rows: int) -> np.ndarray:
    """``rows`` encoded feature rows drawn from the task's population at the newest snapshot."""
    from features.store import feature_store
    from pipelines.scoring.inputs import (
        default_as_of,
        population,
        read_features_as_of,
        resolve_service,
    )

    as_of = default_as_of(ws)
    plan = resolve_service(feature_store(ws), spec.feature_service)
    frame = read_features_as_of(plan, population(ws.lake, task, as_of, spec.mode), as_of)
    real = encoder.arrow(frame.to_arrow())
    log.info("%s: %d real rows at %s", task, len(real), as_of.date())
    return real[np.random.default_rng(7).integers(0, len(real), rows)]


def timed(fn: Any) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn()``: CPU time (this process's) counts the work done, not the waits
    for a core that other jobs of a shared machine cause."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def compile_seconds() -> tuple[tuple[float, float], tuple[float, float]]:
    """(import, first explainer) seconds in a fresh process: with an empty numba cache, then with it."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
        runs = []
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=env, cwd=root, check=True,
                                 capture_output=True, text=True).stdout.split()
            runs.append((float(out[0]), float(out[1])))
    return runs[0], runs[1]


def bench_model(name: str, booster: Any, x: np.ndarray, subset: int, repeat: int) -> dict[str, Any]:
    from training.explain import MAX_TABLE_BYTES, TreeExplainer

    threads = os.cpu_count() or 1
    started = time.perf_counter()
    chosen = TreeExplainer.of(booster)  # first build in this process: includes loading the compiled kernels
    first_build = time.perf_counter() - started
    label_chosen = f"chosen: tables to depth {chosen.table_depth} (default: ≤ 10 within {MAX_TABLE_BYTES >> 20} MiB)"
    builds, precompute = {}, {}
    for label, options in (("direct formula, no tables", {"max_table_depth": 0}),
                           ("tables to depth 8", {"max_table_depth": 8}), (label_chosen, {})):
        started = time.perf_counter()
        builds[label] = TreeExplainer.of(booster, **options)
        precompute[label] = time.perf_counter() - started
    small = x[:subset]
    samples: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def add(label: str, seconds: tuple[float, float], rows: int) -> None:
        samples.setdefault(label, []).append(seconds[0] / rows * 1e6)  # µs a row
        cpu.setdefault(label, []).append(seconds[1] / rows * 1e6)

    out: dict[str, np.ndarray] = {}
    for _ in range(repeat):
        add("bare predict", timed(lambda: booster.predict(x, num_threads=1)), len(x))
        add("LightGBM pred_contrib",
            timed(lambda: out.update(theirs=booster.predict(small, pred_contrib=True, num_threads=1))), subset)
        for label in ("direct formula, no tables", "tables to depth 8"):
            add(label, timed(lambda label=label: builds[label].contributions(small)), subset)
        add(label_chosen, timed(lambda: builds[label_chosen].contributions(x)), len(x))
        add(f"bare predict, {threads} threads", timed(lambda: booster.predict(x, num_threads=threads)), len(x))
        add(f"chosen, {threads} threads", timed(lambda: builds[label_chosen].contributions(x, threads=threads)),
            len(x))
    diff = {label: float(np.abs(e.contributions(small) - out["theirs"]).max()) for label, e in builds.items()}
    per_row = {label: median(v) for label, v in samples.items()}
    bare = {label: median(samples["bare predict"]) for label in samples}
    for label in samples:
        if "threads" in label:
            bare[label] = median(samples[f"bare predict, {threads} threads"])
    log.info("%s: %s", name, {k: round(v, 2) for k, v in per_row.items()})
    return {"name": name, "chosen": label_chosen, "trees": booster.num_trees(), "features": booster.num_feature(),
            "rows": len(x),
            "subset": subset, "per_row": per_row, "bare": bare, "samples": samples, "cpu": cpu, "diff": diff,
            "precompute": precompute, "first_build": first_build,
            "memory": {label: (e.table_bytes, e.nbytes) for label, e in builds.items()},
            "budget": MAX_TABLE_BYTES, "threads": threads}


def end_to_end(ws: Any) -> list[str]:
    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions

    lines = []
    for task in ("churn", "clv"):
        seconds = {}
        for reasons in ("none", "all", "none", "all"):
            manifest = score(ws, task, None, ScoreOptions(reasons=reasons, drift=False))
            seconds.setdefault(reasons, []).append(manifest.seconds)
        rows = manifest.rows
        lines.append(f"| `score {task}` ({rows:,} rows) | {' / '.join(f'{s:.1f}' for s in seconds['none'])} s | "
                     f"{' / '.join(f'{s:.1f}' for s in seconds['all'])} s | "
                     f"+{median(seconds['all']) - median(seconds['none']):.1f} s |")
    return lines


def table(result: dict[str, Any]) -> list[str]:
    lines = [("| method | rows timed | µs a row (median) | runs (µs a row) | × bare predict | CPU µs a row (median) "
             "| × bare predict, CPU | max abs diff vs pred_contrib (subset rows) |"),
             "|---|---|---|---|---|---|---|---|"]
    cpu_bare = median(result["cpu"]["bare predict"])
    for label, us in result["per_row"].items():
        rows = result["subset"] if label in ("LightGBM pred_contrib", "direct formula, no tables",
                                             "tables to depth 8") else result["rows"]
        cpu = median(result["cpu"][label])
        # CPU time of a 2-thread call adds both threads' time: not comparable per row, so not shown.
        cpu_cells = "– | –" if "threads" in label else f"{cpu:.2f} | {cpu / cpu_bare:.1f}×"
        diff = result["diff"].get(label)
        if label.startswith("chosen,"):
            diff = result["diff"][result["chosen"]]
        runs = ", ".join(f"{s:.2f}" for s in result["samples"][label])
        lines.append(f"| {label} | {rows:,} | {us:.2f} | {runs} | {us / result['bare'][label]:.1f}× | {cpu_cells} | "
                     f"{'–' if diff is None else f'{diff:.1e}'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/crmscore-bench/reasons"))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--write", action="store_true", help="rewrite the 'reasons' section of BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    context = machine()
    (cold_import, cold_first), (warm_import, warm_first) = compile_seconds()

    from training.model import load_model
    from training.tasks import CHURN, VALUE
    from training.value.scorer import load_value_model

    ws = trained_world(args.home)
    churn = load_model(CHURN.model_name)
    value = load_value_model()
    if value.spec.kind != "tweedie":
        raise SystemExit(f"the clv champion is {value.spec.kind}; this bench explains its tweedie booster")
    results = [
        bench_model("churn champion", churn.booster,
                    feature_rows(ws, CHURN.key, churn.spec, churn.encoder, args.rows), args.subset, args.repeat),
        bench_model("clv champion (tweedie)", value.boosters["clv"],
                    feature_rows(ws, VALUE.key, value.spec.model, value.encoder, args.rows), args.subset,
                    args.repeat),
    ]
    e2e = [] if args.skip_end_to_end else end_to_end(ws)
    end_load = os.getloadavg()[0]

    parts = [f"""`bench/bench_reasons.py` on {context} (load average {end_load:.1f} at the end): the churn and
clv champions of a 20,000-customer world (seed 1); {args.rows:,} feature rows drawn from each model's
population at the newest snapshot (real rows, encoded as scoring encodes them). Medians of
{args.repeat} interleaved repeats; µs a row is wall time over the rows timed; × is against the bare
predict of the same thread count. The machine was shared with other jobs: ratios, measured side by
side, are steadier than the times.
"""]
    for r in results:
        mem = "; ".join(f"{label}: tables {t / 2**20:.1f} MiB, all arrays {a / 2**20:.1f} MiB"
                        for label, (t, a) in r["memory"].items())
        pre = ", ".join(f"{label} {s:.2f} s" for label, s in r["precompute"].items())
        parts += [f"### {r['name']}: {r['trees']} trees, {r['features']} features", "", *table(r), "",
                  f"- precompute (`TreeExplainer.of`): {pre}; first in the process {r['first_build']:.2f} s",
                  f"- memory: {mem}", ""]
    parts += ["### compile", "",
              (f"A fresh process on an empty numba cache (a new machine): import {cold_import:.2f} s, first "
              f"`TreeExplainer.of` (compiles the kernels) {cold_first:.2f} s; the next process, cache filled: "
              f"import {warm_import:.2f} s, first explainer {warm_first:.2f} s."), ""]
    if e2e:
        parts += ["### end to end", "",
                  ("`pipelines.scoring.job.score` (what `crmscore score` runs), local engine, all cores, no drift, "
                  "twice each, alternating:"), "",
                  "| run | `--reasons none` | `--reasons all` | reasons cost |", "|---|---|---|---|", *e2e, ""]
    body = "\n".join(parts)
    print(body)
    if args.write:
        write_section("reasons", body)


if __name__ == "__main__":
    main()
