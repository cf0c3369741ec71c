"""The local engine of ``crmscore score``: the feature frame in chunks, scored by a thread pool.

LightGBM releases the GIL while it predicts, so threads share the cores without
copying the model; each worker writes its own part file into the run's staging
directory. Reconciliation, the manifest and the swap are the job's (``job.py``).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipelines.scoring.inputs import ServiceRead, read_features_as_of
from pipelines.scoring.predict import BinaryPredictor
from pipelines.scoring.table import StageSeconds, grade_counts
from pipelines.scoring.types import (
    FEATURE_TIMESTAMP,
    EngineResult,
    NoProgress,
    Progress,
    ScoreOptions,
)


def score_local(plan: ServiceRead, pop: pl.DataFrame, as_of: datetime, predictor: BinaryPredictor,
                staging: Path, options: ScoreOptions, progress: Progress | None = None) -> EngineResult:
    """Score ``pop`` as of ``as_of`` into part files under ``staging``."""
    progress = progress or NoProgress()
    stages = StageSeconds()
    t0 = time.perf_counter()
    frame = read_features_as_of(plan, pop, as_of)
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    stages.read = time.perf_counter() - t0
    threads = options.threads or os.cpu_count() or 1
    n = table.num_rows
    # Enough chunks to keep every thread busy, none larger than chunk_rows.
    size = max(1, min(options.chunk_rows, math.ceil(n / threads) if n else 1))
    offsets = list(range(0, n, size))

    def work(index: int, offset: int) -> tuple[int, np.ndarray, dict[str, int], dict[str, float]]:
        timings: dict[str, float] = {}
        out = predictor.score_table(table.slice(offset, size), timings)
        started = time.perf_counter()
        pq.write_table(out, staging / f"part-{index:05d}.parquet", compression="zstd")
        timings["write"] = time.perf_counter() - started
        probabilities = out.column("probability").to_numpy(zero_copy_only=False)
        return index, probabilities, grade_counts(out, predictor.grade_column), timings

    progress.start(f"{predictor.task} ({n:,} rows)", n)
    results: dict[int, np.ndarray] = {}
    grades: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool:
            futures = {pool.submit(work, i, off): off for i, off in enumerate(offsets)}
            for future in as_completed(futures):
                index, probabilities, counts, timings = future.result()
                results[index] = probabilities
                for k, v in counts.items():
                    grades[k] = grades.get(k, 0) + v
                for stage, seconds in timings.items():
                    setattr(stages, stage, getattr(stages, stage) + seconds)
                progress.advance(len(probabilities))
    finally:
        progress.stop()
    probabilities = np.concatenate([results[i] for i in sorted(results)]) if results else np.empty(0)
    no_features = int(frame.get_column(FEATURE_TIMESTAMP).null_count())
    return EngineResult(stages=stages, probabilities=probabilities, grades=grades, features=frame,
                        no_features=no_features)
