"""The CDNOW worked example (examples/cdnow) imported end to end and valid under the contract."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import polars as pl
import pytest

from crmdata.contract import TABLES
from crmdata.importer import import_lake
from crmdata.lake import read_manifest, table_path
from crmdata.validate import validate_lake

MAPPING = Path(__file__).resolve().parents[1] / "examples" / "cdnow" / "mapping.yaml"
#: Measured on lifetimes 0.11.3's CDNOW_master.txt: 69,659 transactions of 23,570 customers.
CUSTOMERS = 23_570
ORDERS = 69_659


@pytest.fixture(scope="module")
def cdnow_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # find_spec locates the package without importing it (lifetimes breaks on new pandas).
    if importlib.util.find_spec("lifetimes") is None:
        pytest.skip("lifetimes (dev extra) is not installed; it ships CDNOW_master.txt")
    out = tmp_path_factory.mktemp("cdnow") / "lake"
    summary = import_lake(MAPPING, out)
    assert summary.rows == {"customers": CUSTOMERS, "orders": ORDERS}
    return out


def test_cdnow_counts_and_schema(cdnow_lake: Path) -> None:
    customers = pl.read_parquet(table_path(cdnow_lake, "customers"))
    orders = pl.read_parquet(table_path(cdnow_lake, "orders"))
    assert customers.height == CUSTOMERS
    assert orders.height == ORDERS
    assert orders.schema == pl.Schema(TABLES["orders"].polars_schema())
    assert read_manifest(cdnow_lake).tables == ["customers", "orders"]
    # CDNOW is one cohort: every customer first bought in Q1 1997, and signup = first order.
    first = orders.group_by("customer_id").agg(pl.col("ordered_at").min().alias("signup_at"))
    joined = customers.join(first, on="customer_id", suffix="_first")
    assert joined.height == CUSTOMERS
    assert (joined["signup_at"] == joined["signup_at_first"]).all()
    assert customers["signup_at"].dt.year().unique().to_list() == [1997]
    assert customers["signup_at"].dt.month().max() == 3
    assert orders["ordered_at"].max().year == 1998
    assert orders["order_id"].n_unique() == ORDERS


def test_cdnow_lake_is_valid(cdnow_lake: Path) -> None:
    errors = [str(p) for p in validate_lake(cdnow_lake) if p.severity == "error"]
    assert errors == []
