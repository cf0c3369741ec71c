"""The Spark engine of ``crmscore score``: the same job on a Spark DataFrame.

Spark reads the feature service's offline tables and does the point-in-time
selection (newest row per entity with ``as_of - ttl <= event_timestamp <=
as_of``, a window function), joins the population, and scores each partition
with ``mapInArrow`` over the very ``BinaryPredictor`` the local engine runs —
so the two engines' scores are equal (tests hold them to 1e-9; they are in
fact bit-identical). The output is written by Spark into the run's staging
directory; reconciliation, the manifest and the atomic swap are the job's.

Why not ``mlflow.pyfunc.spark_udf``: the registered model's pyfunc is the plain
LightGBM flavour, i.e. the raw booster output on already-encoded columns. The
calibrator, the grade thresholds and the category codes travel as JSON beside
it (``training/model.py``), and reasons need ``pred_contrib``; a pyfunc UDF
would score something else. ``mapInArrow`` (the Arrow sibling of
``mapInPandas``) runs our predictor on Arrow batches with no pandas round trip.

On a cluster (docs/batch-scoring.md) the same code runs under ``spark-submit``
or on Databricks: ``spark_session`` picks up the cluster's master when one is
configured, and only ``local[*]`` when there is none.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow.dataset as ds

# The session helper lives on the lowest floor that needs it (the feature build uses it too).
from features.spark import spark_session as _shared_session
from pipelines.scoring.inputs import ServiceRead, ViewRead
from pipelines.scoring.predict import BinaryPredictor
from pipelines.scoring.table import StageSeconds, grade_counts
from pipelines.scoring.types import FEATURE_TIMESTAMP, EngineResult, Progress, ScoreOptions

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

#: The drift report under Spark compares a uniform sample of at most this many rows.
DRIFT_SAMPLE_ROWS = 200_000


def spark_session(master: str | None = None, app_name: str = "crmscore-score") -> SparkSession:
    """The shared session helper (``features.spark``): ``master``, $CRMSCORE_SPARK_MASTER,
    the cluster's under spark-submit, else ``local[*]``."""
    return _shared_session(master, app_name=app_name)


def features_as_of(spark: SparkSession, plan: ServiceRead, population: DataFrame, as_of: datetime) -> DataFrame:
    """Spark's version of ``inputs.read_features_as_of``: per population entity the newest
    row within each view's TTL (Feast's point-in-time rule), in one plan."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    key = plan.key
    out = population
    stamps = []
    at = F.lit(as_of.astimezone(UTC).replace(tzinfo=None)).cast("timestamp")  # session time zone is UTC
    for i, view in enumerate(plan.views):
        stamp = f"_ts{i}"
        rows = _source(spark, view).select(
            F.col(view.key).cast("string").alias(key), F.col(view.timestamp_field).alias(stamp), *view.features)
        inside = F.col(stamp) <= at
        if view.ttl is not None:
            inside &= F.col(stamp) >= at - F.expr(f"INTERVAL {int(view.ttl.total_seconds())} SECONDS")
        newest = Window.partitionBy(key).orderBy(F.col(stamp).desc())
        latest = (rows.where(inside).join(population.select(key), on=key, how="left_semi")
                  .withColumn("_rank", F.row_number().over(newest)).where("_rank = 1").drop("_rank"))
        out = out.join(latest, on=key, how="left")
        stamps.append(stamp)
    oldest = F.least(*[F.col(s) for s in stamps]) if len(stamps) > 1 else F.col(stamps[0])
    missing = None
    for s in stamps:
        missing = F.col(s).isNull() if missing is None else (missing | F.col(s).isNull())
    return out.select(key, F.when(missing, None).otherwise(oldest).alias(FEATURE_TIMESTAMP), *plan.features)


def _source(spark: SparkSession, view: ViewRead) -> DataFrame:
    """The view's offline rows: a file path (Feast file source), or the table / query /
    path of a SparkSource (Feast's Spark offline store)."""
    if view.table:
        return spark.table(view.table)
    if view.query:
        return spark.sql(view.query)
    return spark.read.format(view.file_format).load(view.path)


def score_with_spark(plan: ServiceRead, pop: pl.DataFrame, as_of: datetime, predictor: BinaryPredictor,
                     staging: Path, options: ScoreOptions, progress: Progress | None = None,
                     spark: SparkSession | None = None) -> EngineResult:
    """Score on Spark into ``staging``; see the module docstring."""
    stages = StageSeconds()
    t0 = time.perf_counter()
    spark = spark or spark_session(options.spark_master)
    session_seconds = time.perf_counter() - t0
    key = plan.key
    population = spark.createDataFrame(pop.select(pl.col(key).cast(pl.String)).to_pandas())
    frame = features_as_of(spark, plan, population, as_of)
    partitions = max(1, int(spark.sparkContext.defaultParallelism))
    if options.drift:
        # The drift sample reads the same rows again: keep them instead of recomputing the join.
        frame = frame.persist()
    scored = frame.repartition(partitions).mapInArrow(predictor.score_batches, predictor.spark_schema())
    if progress is not None:
        progress.start(f"{predictor.task} on Spark ({pop.height:,} rows)", pop.height)
    t1 = time.perf_counter()
    try:
        scored.write.mode("overwrite").parquet(str(staging))
    finally:
        if progress is not None:
            progress.advance(pop.height)
            progress.stop()
    # Spark's bookkeeping files are not part of the table (and checksums go stale on rename).
    for extra in [*staging.glob("_SUCCESS"), *staging.glob(".*.crc")]:
        extra.unlink()
    stages.read = session_seconds
    stages.predict = time.perf_counter() - t1  # read + score + write all happen in this one Spark job
    out = ds.dataset(sorted(str(p) for p in staging.glob("*.parquet")), format="parquet").to_table(
        columns=["probability", predictor.grade_column, FEATURE_TIMESTAMP])
    probabilities = out.column("probability").to_numpy(zero_copy_only=False)
    features = None
    if options.drift:
        fraction = min(1.0, DRIFT_SAMPLE_ROWS / max(pop.height, 1))
        sample = frame.sample(fraction=fraction, seed=7) if fraction < 1.0 else frame
        features = pl.from_arrow(sample.toArrow())
        frame.unpersist()
    return EngineResult(stages=stages, probabilities=np.asarray(probabilities, dtype=float),
                        grades=grade_counts(out, predictor.grade_column), features=features,
                        no_features=int(out.column(FEATURE_TIMESTAMP).null_count),
                        extra_inputs={"spark master": spark.sparkContext.master, "spark version": spark.version})

