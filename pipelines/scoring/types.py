"""What a scoring run hands between its parts: options, progress, an engine's result.

The job (``job.score``) passes ``ScoreOptions`` and a ``Progress`` to an engine
(``local.score_local``, ``spark.score_with_spark``) or to ``nbp.score_nbp`` and
gets an ``EngineResult`` back. The types live here, below all of them, so the
engines never import the job that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, Field

from pipelines.scoring.table import StageSeconds

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

#: The column of a feature frame (``inputs.read_features_as_of``) holding the event time of
#: the feature row used, null when the entity had none within the TTL; the predictor
#: leaves such an entity's scores null.
FEATURE_TIMESTAMP = "feature_timestamp"
Engine = Literal["local", "spark"]
#: Which rows get top reasons: all, the best grades only (``predict.TOP_GRADES``), or none.
ReasonsMode = Literal["all", "top", "none"]


class ScoreOptions(BaseModel):
    """How to run a scoring job (the CLI's options, validated once)."""

    engine: Engine = "local"
    reasons: ReasonsMode = Field("all", description="top reasons for all rows, the top grades only, or none "
                                                   "(exact TreeSHAP: ~6-10x the cost of a predict)")
    chunk_rows: int = Field(100_000, ge=1, description="rows per chunk (and per part file)")
    threads: int | None = Field(None, ge=1, description="worker threads (default: all cores)")
    drift: bool = Field(True, description="compare with the champion's holdout and log to MLflow")
    profile: str = "local"
    spark_master: str | None = None
    top_products: int = Field(10, ge=1, description="next-best-product: products per customer")
    allow_missing: bool = Field(False, description="score entities without features as null instead of "
                                                   "failing the run")


class Progress(Protocol):
    """Where a run reports progress (the CLI passes a rich progress bar)."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    """A ``Progress`` that reports nowhere: library calls, tests and ``--json`` runs."""

    def start(self, description: str, total: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def stop(self) -> None: ...


@dataclass
class EngineResult:
    """What an engine hands back to the job: the stage timings, the scores for the
    summary and drift, and the feature frame drift compares (a sample under Spark)."""

    stages: StageSeconds
    probabilities: np.ndarray
    grades: dict[str, int]
    features: pl.DataFrame | None
    no_features: int
    extra_inputs: dict[str, str] = field(default_factory=dict)


class Skipped(BaseModel):
    """A task ``score_all`` left out, and why (it has no champion yet)."""

    task: str
    reason: str
