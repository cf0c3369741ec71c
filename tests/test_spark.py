"""The Spark engine (local mode) against the local engine on the trained tiny world.

One test, one Spark session: starting a JVM and its Python workers costs more
than the checks themselves on a two-core machine, so every check shares them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pytest

from crmdata.workspace import Workspace

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'crmscore[spark]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    from tests.test_score_world import workspace_copy

    with workspace_copy(tmp_path_factory, "spark") as workspace:
        yield workspace


def _rows(path: Path, key: str):  # type: ignore[no-untyped-def]
    files = sorted(str(p) for p in path.glob("*.parquet"))
    return ds.dataset(files, format="parquet").to_table().sort_by(key)


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(pl.all().cast(pl.String))


def test_the_spark_engine_matches_the_local_engine(ws: Workspace) -> None:
    from features.store import feature_store
    from pipelines.scoring.inputs import (
        default_as_of,
        population,
        read_features_as_of,
        resolve_service,
    )
    from pipelines.scoring.job import score
    from pipelines.scoring.spark import features_as_of, spark_session
    from pipelines.scoring.types import ScoreOptions

    spark = spark_session("local[2]", app_name="crmscore-tests")
    try:
        # 1. Scores: the same rows, probabilities within 1e-9, everything else equal.
        local = score(ws, "churn", options=ScoreOptions(drift=False))
        local_rows = _rows(Path(local.output), "customer_id")
        on_spark = score(ws, "churn", options=ScoreOptions(engine="spark"))
        spark_rows = _rows(Path(on_spark.output), "customer_id")
        assert on_spark.output == local.output and on_spark.rows == local.rows == local_rows.num_rows
        assert spark_rows.column("customer_id").to_pylist() == local_rows.column("customer_id").to_pylist()
        np.testing.assert_allclose(spark_rows.column("probability").to_numpy(),
                                   local_rows.column("probability").to_numpy(), rtol=0, atol=1e-9)
        for column in ("as_of", "score", "band", "reasons", "model_version", "feature_timestamp"):
            assert spark_rows.column(column).to_pylist() == local_rows.column(column).to_pylist(), column
        assert on_spark.inputs["spark master"] == "local[2]"
        # The drift report under Spark uses the same reference (the champion's holdout).
        assert on_spark.drift is not None and on_spark.drift["reference_rows"] > 0
        assert on_spark.drift["score_psi"] is not None and on_spark.drift["mlflow_run_id"]

        # 2. The point-in-time read: Spark's window function equals the polars read, also
        #    between snapshots (newest row before as_of within the TTL).
        plan = resolve_service(feature_store(ws), "lead_scoring_v1")
        as_of = default_as_of(ws) - timedelta(days=3)
        pop = population(ws.lake, "lead", as_of)
        expected = read_features_as_of(plan, pop, as_of).sort("lead_id")
        got = pl.from_arrow(features_as_of(spark, plan, spark.createDataFrame(pop.to_pandas()), as_of).toArrow())
        assert got.columns == expected.columns
        assert _as_text(got.sort("lead_id")).equals(_as_text(expected))

        # 3. Feast's Spark offline store names tables, not files: read the same way.
        churn = resolve_service(feature_store(ws), "churn_v1")
        view = churn.views[0]
        spark.read.parquet(view.path).createOrReplaceTempView("customer_features_table")
        as_table = dataclasses.replace(churn, views=(dataclasses.replace(view, path="",
                                                                        table="customer_features_table"),))
        newest = default_as_of(ws)
        ids = population(ws.lake, "churn", newest)
        from_table = pl.from_arrow(
            features_as_of(spark, as_table, spark.createDataFrame(ids.to_pandas()), newest).toArrow())
        # (the service's first view only: churn_v1 also reads the customer_value view)
        first_view = dataclasses.replace(churn, views=(view,))
        assert _as_text(from_table.sort("customer_id")).equals(
            _as_text(read_features_as_of(first_view, ids, newest).sort("customer_id")))
    finally:
        spark.stop()

