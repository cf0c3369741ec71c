"""``features build --engine spark`` against DuckDB: the same SQL, transpiled, gives the same tables.

One Spark session (local[2]) for the module: starting the JVM costs more than a build
of these lakes. Each lake is built by both engines and every table compared: the same
schema, the same rows in the same order, every value equal (floats to 1e-9).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from features.build import BuildSummary, build_features, read_build_summary
from features.catalog import PEER_FEATURES, table_file
from features.grid import snapshot_grid
from tests.factories import tiny_tables, write_lake

pytestmark = pytest.mark.slow

TABLES = ("customer", "lead", "product", "customer_value")


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from features.spark import spark_session

    session = spark_session("local[2]", app_name="crmscore-tests")
    yield session
    session.stop()


def _both(lake: Path, root: Path, as_of: list[datetime]) -> tuple[Path, Path]:
    duck, on_spark = root / "duckdb", root / "spark"
    build_features(lake, duck, as_of)
    build_features(lake, on_spark, as_of, engine="spark")
    return duck, on_spark


def _assert_same_tables(duck: Path, on_spark: Path) -> None:
    for entity in TABLES:
        expected, got = pl.read_parquet(duck / table_file(entity)), pl.read_parquet(on_spark / table_file(entity))
        assert got.schema == expected.schema, entity
        assert got.height == expected.height, entity
        for name in expected.columns:
            want, have = expected[name], got[name]
            assert (have.is_null() == want.is_null()).all(), f"{entity}.{name}: nulls differ"
            if want.dtype.is_float():
                gap = (have - want).abs().max()
                assert gap is None or gap <= 1e-9, f"{entity}.{name}: differs by {gap}"
            else:
                assert have.to_list() == want.to_list(), f"{entity}.{name}"


def _summaries(duck: Path, on_spark: Path) -> tuple[BuildSummary, BuildSummary]:
    return read_build_summary(duck), read_build_summary(on_spark)


def test_spark_builds_the_duckdb_tables_on_a_small_world(spark: Any, tmp_path: Path) -> None:
    from crmdata.synth import WorldConfig, generate_world

    lake = tmp_path / "lake"
    generate_world(WorldConfig(customers=400, leads=200, products=20, seed=5), lake)
    as_of = snapshot_grid(lake, periods=3, include_truth=False)
    duck, on_spark = _both(lake, tmp_path, as_of)
    _assert_same_tables(duck, on_spark)
    # The peer was fitted (not two columns of nulls compared), and so were the RFM scores.
    value = pl.read_parquet(on_spark / table_file("customer_value"))
    for name in (*PEER_FEATURES, "rfm_r", "rfm_segment"):
        assert value[name].null_count() < value.height, name
    expected, got = _summaries(duck, on_spark)
    assert got.engine == "spark" and expected.engine == "duckdb"
    assert got.entities == expected.entities and got.as_of == expected.as_of


def test_spark_builds_the_duckdb_tables_without_orders(spark: Any, tmp_path: Path) -> None:
    """A subscription business (no orders nor products: Spark gets the same empty orders
    view), with custom attributes that hold nulls."""
    tables = tiny_tables()
    del tables["orders"], tables["products"]
    tables["customers"] = tables["customers"].with_columns(
        pl.Series("tier", ["gold", "silver", None]), pl.Series("credit", [1.5, None, 3.0]))
    tables["leads"] = tables["leads"].with_columns(pl.Series("score", [10.0, 20.0, None]))
    attributes = {"customers": {"tier": "categorical", "credit": "numeric"}, "leads": {"score": "numeric"}}
    lake = write_lake(tmp_path / "lake", tables, custom_attributes=attributes)
    as_of = [*snapshot_grid(lake, periods=2), datetime(2023, 3, 1, tzinfo=UTC)]
    duck, on_spark = _both(lake, tmp_path, as_of)
    _assert_same_tables(duck, on_spark)
    expected, got = _summaries(duck, on_spark)
    assert got.entities == expected.entities and got.entities["customer"].unavailable
    assert "attr_tier" in got.entities["customer"].features


def test_the_transpiler_refuses_what_spark_cannot_run() -> None:
    from crmdata.errors import CrmscoreError
    from features.spark import to_spark_sql

    assert "UNIX_MICROS(t)" in to_spark_sql("SELECT epoch_us(t) FROM x")
    with pytest.raises(CrmscoreError, match="ASOF"):
        to_spark_sql("SELECT * FROM a ASOF JOIN b ON a.t >= b.t")
    with pytest.raises(CrmscoreError, match="list_position"):
        to_spark_sql("SELECT list_position([1, 2], x) FROM t")
