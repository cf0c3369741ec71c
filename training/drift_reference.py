"""The drift reference: histograms of a model's training holdout, logged with the model.

Batch scoring compares today's features and scores with the rows the model was
judged on (PSI, ``pipelines.drift``). Rebuilding those rows at scoring time
would need the holdout's feature snapshot to still be on disk; the histograms
are small, so the trainer logs them as an artifact of its run
(``drift_reference.json``) and drift reads them from there.

Binning: numeric features use the holdout's deciles (distinct edges only, so a
feature that is mostly 0 gets fewer bins), categoricals their values; a missing
value is a bin of its own in both, so a feature going missing is drift too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

BINS = 10
#: The artifact's path inside the training run.
ARTIFACT = "drift_reference.json"
#: The category a missing categorical value is counted under (no real value looks like it).
MISSING = "\0missing"


def numeric_bins(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior bin edges: the distinct deciles of the reference's non-missing values."""
    ref = np.asarray(reference, dtype=float)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def numeric_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of values per bin: ``len(edges) + 1`` value bins, then the missing bin."""
    x = np.asarray(values, dtype=float)
    missing = ~np.isfinite(x)
    index = np.where(missing, len(edges) + 1, np.searchsorted(edges, np.where(missing, 0, x), side="right"))
    counts = np.bincount(index, minlength=len(edges) + 2)
    return counts / max(len(x), 1)


def category_shares(values: Iterable[str | None]) -> dict[str, float]:
    """Share of each category, missing values (None) under ``MISSING``."""
    labels = pd.Series([MISSING if v is None else v for v in values], dtype=object)
    counts = labels.value_counts(sort=False)
    return {str(k): float(v) / max(len(labels), 1) for k, v in counts.items()}


def as_categories(series: pd.Series) -> list[str | None]:
    """A categorical column's values as text, None where missing (NaN, None, pd.NA)."""
    return [None if pd.isna(v) else str(v) for v in series.astype(object)]


class Histogram(BaseModel):
    kind: Literal["numeric", "categorical"]
    edges: list[float] = Field(default_factory=list, description="numeric: interior bin edges")
    shares: list[float] = Field(default_factory=list, description="numeric: per bin, the missing bin last")
    categories: dict[str, float] = Field(default_factory=dict, description="categorical: share per value")

    @property
    def missing(self) -> float:
        return self.shares[-1] if self.kind == "numeric" else self.categories.get(MISSING, 0.0)

    @classmethod
    def of_numbers(cls, values: np.ndarray) -> Histogram:
        edges = numeric_bins(values)
        return cls(kind="numeric", edges=edges.tolist(), shares=numeric_shares(values, edges).tolist())


class DriftReference(BaseModel):
    """What a model's holdout looked like: rows, cutoff, and a histogram per feature and of the score."""

    holdout_cutoff: datetime
    rows: int
    features: dict[str, Histogram]
    score: Histogram

    @classmethod
    def of_holdout(cls, holdout: pd.DataFrame, features: list[str], categorical: set[str],
                   probabilities: np.ndarray, cutoff: Any) -> DriftReference:
        histograms = {
            name: (Histogram(kind="categorical", categories=category_shares(as_categories(holdout[name])))
                   if name in categorical else
                   Histogram.of_numbers(pd.to_numeric(holdout[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)))
            for name in features
        }
        return cls(holdout_cutoff=pd.Timestamp(cutoff).to_pydatetime(), rows=len(holdout), features=histograms,
                   score=Histogram.of_numbers(np.asarray(probabilities, dtype=float)))


def load_reference(run_id: str) -> DriftReference:
    """The drift reference logged by training run ``run_id``, or a one-line error saying why not."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from crmdata.errors import CrmscoreError

    try:
        raw = mlflow.artifacts.load_dict(f"runs:/{run_id}/{ARTIFACT}")
    except MlflowException as exc:
        raise CrmscoreError(f"training run {run_id} has no {ARTIFACT} (trained before drift references were "
                            f"logged, or its artifacts are gone: {exc.message.splitlines()[0]})") from None
    return DriftReference.model_validate(raw)
