"""What a training run learned from, logged as MLflow datasets.

MLflow's run table shows a run's datasets in its Dataset column, and a run's page
lists them under Inputs with their source, digest and profile. Every trainer logs
its inputs here, with the same input tags: ``rows`` and ``cutoffs`` (the point-in-time
snapshot dates a fold covers, or the cutoff the data stops at).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource


def cutoff_span(cutoffs: Iterable[datetime] | pd.Series) -> str:
    """``2024-01-01`` for one cutoff, ``2023-10-02 … 2024-01-01 (14)`` for several."""
    stamps = sorted(pd.to_datetime(pd.Series(list(cutoffs)), utc=True).unique())
    if not stamps:
        return "none"
    if len(stamps) == 1:
        return f"{stamps[0]:%Y-%m-%d}"
    return f"{stamps[0]:%Y-%m-%d} … {stamps[-1]:%Y-%m-%d} ({len(stamps)})"


def _source(path: Path | None) -> LocalArtifactDatasetSource | None:
    # Given as an object: MLflow's resolver finds two readings of a bare path and warns.
    # None: MLflow records the code that logged the frame instead.
    return None if path is None else LocalArtifactDatasetSource(str(path))


def log_frame(frame: pd.DataFrame, *, name: str, context: str, source: Path | None, digest: str,
              target: str, cutoff_column: str) -> None:
    """Log one fold of a point-in-time training frame (schema and row count come with it)."""
    with warnings.catch_warnings():
        # MLflow's hint about integer columns and missing values is about model signatures;
        # a dataset's schema only describes the frame. (The schema is inferred when the
        # dataset is logged, not when it is made: both sit inside.)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=_source(source), name=name, targets=target, digest=digest)
        mlflow.log_input(dataset, context=context,
                         tags={"rows": str(len(frame)), "cutoffs": cutoff_span(frame[cutoff_column])})


def log_reference(*, name: str, context: str, source: Path, digest: str, rows: int, cutoffs: str) -> None:
    """Log an input that is not a frame (e.g. a sparse matrix of orders) by its source and digest."""
    dataset = MetaDataset(source=_source(source), name=name, digest=digest)
    mlflow.log_input(dataset, context=context, tags={"rows": str(rows), "cutoffs": cutoffs})
