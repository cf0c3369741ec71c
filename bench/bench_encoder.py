"""Encoder benchmark: feature values -> the booster's matrix, with the one encoder
(``training/encoding.py``) against the pandas ``prepare_features`` it replaced.

    .venv/bin/python bench/bench_encoder.py [--rounds 5000] [--old-rounds 300] [--no-write]

* The spec is a churn spec built from the catalogue (``features/catalog.py``
  ``FEATURES["customer"]``): every customer feature, the ``"str"`` kinds
  categorical with four categories each.
* The rows are what the online store hands the service: per feature a 1-D
  object array of Python values (ints, floats, strings), ~5% of them None and
  one categorical value in ten never seen in training.
* For 1 and 100 rows, in rounds, each path once per round (the old pandas path
  every ``rounds / old-rounds`` rounds: it is ~1000× slower), so machine load
  drifts over all of them alike:

  - ``Encoder.matrix`` on those columns: the service's path;
  - ``Encoder.arrow`` on the same rows as one Arrow record batch: batch scoring's;
  - ``prepare_features`` (now ``Encoder.frame``) on a pandas frame of the rows,
    built beforehand: training's;
  - the old ``prepare_features`` (copied below as the reference) on the same
    frame, and on a frame built in the call from the columns, which is what a
    request would pay for it.

It prints the table and rewrites the ``## encoder`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, write_section
from features.catalog import FEATURES
from training.encoding import Encoder
from training.model import ModelSpec, prepare_features
from training.tasks import CHURN

log = logging.getLogger("bench_encoder")
GOAL_US = 100.0  # one row, on the request path


def old_prepare_features(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The pandas implementation ``Encoder`` replaced, verbatim (the reference)."""
    missing = [f for f in spec.features if f not in frame.columns]
    if missing:
        raise ValueError(f"input lacks {missing}")
    x = pd.DataFrame(index=frame.index)
    for col in spec.features:
        if col in spec.categories:
            codes = pd.Categorical(frame[col].astype("string"), categories=spec.categories[col]).codes
            x[col] = np.where(codes < 0, np.nan, codes).astype("float64")
        else:
            x[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return x


def churn_spec() -> ModelSpec:
    features = FEATURES["customer"]
    categories = {f.name: [f"{f.name}_{i}" for i in range(4)] for f in features if f.kind == "str"}
    return ModelSpec(task=CHURN.key, model_name=CHURN.model_name, feature_service=CHURN.feature_service, entity_key="customer_id",
                     features=[f.name for f in features], categories=categories, label_window_days=90)


def online_columns(spec: ModelSpec, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` rows as the online reader returns them: object arrays of Python values."""
    kinds = {f.name: f.kind for f in FEATURES["customer"]}
    columns = {}
    for name in spec.features:
        if name in spec.categories:
            choices = [*spec.categories[name], "never_seen"]
            values: list[Any] = [choices[k] if k < 4 or rng.random() < 0.4 else choices[0]
                                 for k in rng.integers(0, 5, n)]
        elif kinds[name] == "int":
            values = [int(v) for v in rng.integers(0, 50, n)]
        else:
            values = [float(v) for v in rng.normal(100, 30, n)]
        for i in np.flatnonzero(rng.random(n) < 0.05):
            values[i] = None
        column = np.empty(n, dtype=object)
        column[:] = values
        columns[name] = column
    return columns


def timed(rounds: int, paths: dict[str, tuple[Callable[[], object], int]]) -> dict[str, list[float]]:
    """Seconds per call of each path; path ``(fn, every)`` runs in every ``every``-th round."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    clock = time.perf_counter
    gc.disable()  # a collection landing in one call is the interpreter's cost, not the encoder's
    try:
        for r in range(rounds):
            for name, (fn, every) in paths.items():
                if r % every == 0:
                    started = clock()
                    fn()
                    samples[name].append(clock() - started)
            if r % 200 == 0:
                gc.collect()
    finally:
        gc.enable()
    return samples


def stats(seconds: list[float]) -> tuple[float, float]:
    """Median and p99, in µs."""
    us = np.asarray(seconds) * 1e6
    return float(np.median(us)), float(np.percentile(us, 99))


def bench(n: int, rounds: int, every: int, spec: ModelSpec) -> dict[str, tuple[float, float, int]]:
    rng = np.random.default_rng(n)
    encoder = Encoder.of(spec)
    columns = online_columns(spec, n, rng)
    frame = pd.DataFrame(columns)
    batch = pa.RecordBatch.from_pydict({k: v.tolist() for k, v in columns.items()})
    # The paths must agree before their times mean anything.
    want = encoder.matrix(columns, n)
    for got in (encoder.arrow(batch), prepare_features(frame, spec).to_numpy(),
                old_prepare_features(frame, spec).to_numpy()):
        np.testing.assert_array_equal(got, want)
    samples = timed(rounds, {
        "matrix": (lambda: encoder.matrix(columns, n), 1),
        "arrow": (lambda: encoder.arrow(batch), 1),
        "frame": (lambda: prepare_features(frame, spec), 1),
        "old": (lambda: old_prepare_features(frame, spec), every),
        "old+frame": (lambda: old_prepare_features(pd.DataFrame(columns), spec), every),
    })
    return {name: (*stats(s), len(s)) for name, s in samples.items()}


def report(spec: ModelSpec, results: dict[int, dict[str, tuple[float, float, int]]], every: int, started: str,
           load_end: float) -> str:
    def cell(n: int, path: str) -> str:
        median, p99, count = results[n][path]
        return f"{median:,.1f} / {p99:,.1f} ({count:,})"

    one, hundred = results[1], results[100]
    goal = "met" if one["matrix"][0] <= GOAL_US else "**not met**"
    return f"""`bench/bench_encoder.py` — {started}; load average {load_end:.1f} at the end.
Spec: churn, built from `FEATURES["customer"]`: {len(spec.features)} features, {len(spec.categories)} of them
categorical (the `"str"` kinds, 4 categories each). Rows: what the online store hands the service, a 1-D object
array of Python values per feature (~5% None, one categorical value in ten unseen). Every path once per round,
the old pandas ones every {every}th round; per call, median / p99 in µs (samples in brackets); the garbage
collector runs between rounds, never inside a timed call. All paths give the same matrix (checked first).

| path | 1 row | 100 rows |
|---|---|---|
| **`Encoder.matrix`**, the online store's columns (the service) | **{cell(1, "matrix")}** | **{cell(100, "matrix")}** |
| `Encoder.arrow`, one Arrow record batch (batch scoring) | {cell(1, "arrow")} | {cell(100, "arrow")} |
| `prepare_features` (`Encoder.frame` + a frame around it), frame prebuilt (training) | {cell(1, "frame")} | {cell(100, "frame")} |
| old pandas `prepare_features`, frame prebuilt (the reference) | {cell(1, "old")} | {cell(100, "old")} |
| old pandas `prepare_features`, frame built from the columns in the call | {cell(1, "old+frame")} | {cell(100, "old+frame")} |
| old (frame prebuilt) / `Encoder.matrix`, medians | **{one["old"][0] / one["matrix"][0]:,.0f}×** | **{hundred["old"][0] / hundred["matrix"][0]:,.0f}×** |

Goal: one row ≤ {GOAL_US:.0f} µs — {goal} ({one["matrix"][0]:.1f} µs median). At 100 rows `Encoder.matrix`
costs {hundred["matrix"][0] / 100:.1f} µs a row: every value is visited once to check its type (plain numbers
and None go through numpy's cast, strings for categoricals through a dict lookup, anything else — numeric
strings, bytes, Decimal, <NA> — through pandas itself, which is what keeps the shortcut equal to
`pd.to_numeric` / `astype("string")`) and once more by the cast. `Encoder.arrow` pays a fixed cost per column
(dictionary-encoding, the rule on the distinct values), which a 100k-row chunk of batch scoring amortizes.
"""


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--old-rounds", type=int, default=300)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    spec = churn_spec()
    started = machine()
    every = max(args.rounds // args.old_rounds, 1)
    results = {n: bench(n, args.rounds, every, spec) for n in (1, 100)}
    body = report(spec, results, every, started, os.getloadavg()[0])
    log.info("\n%s", body)
    if not args.no_write:
        write_section("encoder", body)


if __name__ == "__main__":
    main()
