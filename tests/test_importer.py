"""The importer on small hand-made sources: mapping features, and every bad input failing cleanly."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from crmdata.contract import CUSTOM_ATTRIBUTE_DTYPES, TABLES, TIMESTAMP
from crmdata.errors import CrmscoreError
from crmdata.importer import import_lake, load_mapping, resolve_path
from crmdata.lake import read_manifest, table_path
from pipelines.cli import app

CUSTOMERS_CSV = """\
cust_no;joined;land;employees;tier
007;01/02/2024 10:30;DE;12;gold
008;15/03/2024 00:00;FR;;silver
"""

ORDERS_CSV = """\
ref,client,when,n,total
A1,007,2024-04-01,1,19.90
A2,008,2024-04-02T08:00:00Z,2,5
A3,007,2024-04-03 12:00:00+02:00,1,0
"""


def _mapping() -> dict[str, Any]:
    """A mapping over CUSTOMERS_CSV and ORDERS_CSV that uses most features; tests tweak it."""
    return {
        "name": "test shop",
        "tables": {
            "customers": {
                "path": "data/customers.csv",
                "csv": {"separator": ";"},
                "columns": {"customer_id": "cust_no", "signup_at": "joined", "country": "land"},
                "timestamp_format": {"signup_at": "%d/%m/%Y %H:%M"},
                "timezone": "Europe/Berlin",
                "constants": {
                    "segment": "smb",
                    "industry": "retail",
                    "acquisition_channel": "organic",
                },
                "attributes": {"employees": "numeric", "tier": "categorical"},
            },
            "orders": {
                "path": "data/orders.csv",
                "columns": {
                    "order_id": "ref",
                    "customer_id": "client",
                    "ordered_at": "when",
                    "quantity": "n",
                    "amount": "total",
                },
                "constants": {"product_id": None},
            },
        },
    }


@pytest.fixture
def shop(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write the source files; return a function that writes a mapping and gives its path."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "customers.csv").write_text(CUSTOMERS_CSV)
    (data / "orders.csv").write_text(ORDERS_CSV)

    def write(mapping: dict[str, Any]) -> Path:
        path = tmp_path / "mapping.yaml"
        path.write_text(yaml.safe_dump(mapping, sort_keys=False))
        return path

    return write


def test_csv_import_renames_parses_and_fills(shop: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "lake"
    summary = import_lake(shop(_mapping()), out)

    assert summary.rows == {"customers": 2, "orders": 3}
    customers = pl.read_parquet(table_path(out, "customers"))
    orders = pl.read_parquet(table_path(out, "orders"))
    # Contract columns in contract order and dtypes; ids stay text with their leading zeros.
    assert orders.schema == pl.Schema(TABLES["orders"].polars_schema())
    assert customers["customer_id"].to_list() == ["007", "008"]
    assert customers["segment"].to_list() == ["smb", "smb"]
    # %d/%m/%Y %H:%M in Europe/Berlin (UTC+1 before the end-of-March DST switch) -> UTC.
    assert customers["signup_at"].to_list() == [
        datetime(2024, 2, 1, 9, 30, tzinfo=UTC),
        datetime(2024, 3, 14, 23, 0, tzinfo=UTC),
    ]
    # Default ISO-8601: a date, "Z", and an offset, all to UTC.
    assert orders["ordered_at"].to_list() == [
        datetime(2024, 4, 1, tzinfo=UTC),
        datetime(2024, 4, 2, 8, tzinfo=UTC),
        datetime(2024, 4, 3, 10, tzinfo=UTC),
    ]
    assert orders["quantity"].to_list() == [1, 2, 1]
    assert orders["amount"].to_list() == [19.9, 5.0, 0.0]
    assert orders["product_id"].null_count() == 3


def test_sql_columns_and_a_filter_are_evaluated_by_duckdb(shop: Callable[..., Path], tmp_path: Path) -> None:
    mapping = _mapping()
    orders = mapping["tables"]["orders"]
    orders["filter"] = "CAST(total AS DOUBLE) > 0"  # drops A3 (a free order)
    orders["columns"]["quantity"] = {"sql": "CAST(n AS INTEGER) * 10"}
    # A timestamp computed from text, as a tenure in months becomes a start date.
    orders["columns"]["ordered_at"] = {"sql": "TIMESTAMP '2024-06-30' - to_months(CAST(n AS INTEGER))"}
    out = tmp_path / "lake"
    assert import_lake(shop(mapping), out).rows == {"customers": 2, "orders": 2}

    got = pl.read_parquet(table_path(out, "orders"))
    assert got.schema == pl.Schema(TABLES["orders"].polars_schema())
    assert got["order_id"].to_list() == ["A1", "A2"]
    assert got["quantity"].to_list() == [10, 20]
    assert got["ordered_at"].to_list() == [datetime(2024, 5, 30, tzinfo=UTC), datetime(2024, 4, 30, tzinfo=UTC)]


def test_a_subscription_business_needs_no_orders(shop: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "data" / "subs.csv").write_text("client,months,churn\n007,3,No\n008,1,Yes\n")
    mapping = _mapping()
    del mapping["tables"]["orders"]
    mapping["tables"]["subscriptions"] = {
        "path": "data/subs.csv",
        "columns": {
            "customer_id": "client",
            "started_at": {"sql": "TIMESTAMP '2024-06-30' - to_months(CAST(months AS INTEGER))"},
            "ended_at": {"sql": "CASE WHEN churn = 'Yes' THEN TIMESTAMP '2024-06-15' END"},
        },
        "constants": {"plan": "basic", "monthly_price": 10.0},
        "generate_ids": ["subscription_id"],
    }
    out = tmp_path / "lake"
    assert import_lake(shop(mapping), out).rows == {"customers": 2, "subscriptions": 2}
    subs = pl.read_parquet(table_path(out, "subscriptions"))
    assert subs["ended_at"].to_list() == [None, datetime(2024, 6, 15, tzinfo=UTC)]


def test_custom_attributes_keep_declared_types_and_reach_the_manifest(
    shop: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "lake"
    summary = import_lake(shop(_mapping()), out)

    customers = pl.read_parquet(table_path(out, "customers"))
    assert customers.schema["employees"] == CUSTOM_ATTRIBUTE_DTYPES["numeric"]
    assert customers.schema["tier"] == CUSTOM_ATTRIBUTE_DTYPES["categorical"]
    assert customers["employees"].to_list() == [12.0, None]
    expected = {"customers": {"employees": "numeric", "tier": "categorical"}}
    assert read_manifest(out).custom_attributes == expected
    assert summary.custom_attributes == expected


def test_parquet_source_with_numeric_ids_and_naive_datetimes(
    shop: Callable[..., Path], tmp_path: Path
) -> None:
    pl.DataFrame(
        {
            "id": [1.0, 2.0],  # float ids, as pandas writes them after a null once existed
            "customer": [7, 8],
            "at": [datetime(2024, 5, 1, 12), datetime(2024, 5, 2, 12)],
            "qty": [1.0, 3.0],
            "amount": [10, 20],
        }
    ).write_parquet(tmp_path / "data" / "orders.parquet")
    pl.DataFrame(
        {
            "cust_no": ["7", "8"],
            "joined": ["01/02/2024 10:30"] * 2,
            "land": ["DE", "FR"],
            "employees": [1, 2],
            "tier": ["a", "b"],
        }
    ).write_csv(tmp_path / "data" / "customers.csv", separator=";")
    mapping = _mapping()
    mapping["tables"]["orders"] = {
        "path": "data/orders.parquet",
        "columns": {
            "order_id": "id",
            "customer_id": "customer",
            "ordered_at": "at",
            "quantity": "qty",
            "amount": "amount",
        },
        "timezone": "America/New_York",
        "constants": {"product_id": None},
    }
    out = tmp_path / "lake"
    import_lake(shop(mapping), out)

    orders = pl.read_parquet(table_path(out, "orders"))
    assert orders["order_id"].to_list() == ["1", "2"]
    assert orders["customer_id"].to_list() == ["7", "8"]
    assert orders["ordered_at"].dtype == TIMESTAMP
    assert orders["ordered_at"][0] == datetime(2024, 5, 1, 16, tzinfo=UTC)  # EDT is UTC-4
    assert orders["quantity"].dtype == pl.Int64


def test_whitespace_file_derived_customers_and_generated_ids(tmp_path: Path) -> None:
    (tmp_path / "tx.txt").write_text(
        "  1 19970101  1  11.77\r\n  2 19970112  5  77.00\r\n\r\n  1 19970105  2  3.00\r\n"
    )
    mapping = {
        "tables": {
            "orders": {
                "path": "tx.txt",
                "csv": {
                    "separator": "whitespace",
                    "header": False,
                    "column_names": ["cust", "day", "cds", "usd"],
                },
                "columns": {
                    "customer_id": "cust",
                    "ordered_at": "day",
                    "quantity": "cds",
                    "amount": "usd",
                },
                "timestamp_format": {"ordered_at": "%Y%m%d"},
                "constants": {"product_id": None},
                "generate_ids": ["order_id"],
            },
            "customers": {
                "derive": {"from": "orders", "earliest": {"signup_at": "ordered_at"}},
                "constants": {
                    "country": "US",
                    "segment": "consumer",
                    "industry": "music",
                    "acquisition_channel": "unknown",
                },
            },
        }
    }
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(mapping))
    out = tmp_path / "lake"
    import_lake(path, out)

    orders = pl.read_parquet(table_path(out, "orders"))
    customers = pl.read_parquet(table_path(out, "customers"))
    assert orders["order_id"].to_list() == ["1", "2", "3"]
    assert customers.columns == TABLES["customers"].column_names[:6]
    assert customers.rows() == [
        ("1", datetime(1997, 1, 1, tzinfo=UTC), "US", "consumer", "music", "unknown"),
        ("2", datetime(1997, 1, 12, tzinfo=UTC), "US", "consumer", "music", "unknown"),
    ]


def test_optional_tables_absent_unless_mapped(shop: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "lake"
    import_lake(shop(_mapping()), out)
    assert sorted(p.name for p in out.glob("*.parquet")) == ["customers.parquet", "orders.parquet"]
    assert read_manifest(out).tables == ["customers", "orders"]

    (tmp_path / "data" / "products.csv").write_text(
        "sku,title,cat,price,repeat\nP1,Pen,office,1.5,yes\n"
    )
    mapping = _mapping()
    mapping["tables"]["products"] = {
        "path": "data/products.csv",
        "columns": {
            "product_id": "sku",
            "name": "title",
            "category": "cat",
            "price": "price",
            "is_repeatable": "repeat",
        },
    }
    import_lake(shop(mapping), out)
    products = pl.read_parquet(table_path(out, "products"))
    assert products.rows() == [("P1", "Pen", "office", 1.5, True)]
    assert read_manifest(out).tables == ["customers", "products", "orders"]


def test_package_paths_resolve_without_importing(tmp_path: Path) -> None:
    path = resolve_path("pkg://yaml/__init__.py", tmp_path)
    assert path.is_file()
    with pytest.raises(CrmscoreError, match="package 'no_such_pkg_xyz' is not installed"):
        resolve_path("pkg://no_such_pkg_xyz/data.csv", tmp_path)


def _set(mapping: dict[str, Any], keys: str, value: Any) -> dict[str, Any]:
    """Set mapping[k1][k2]... = value (value None with a '-' prefix on the last key deletes it)."""
    *parents, last = keys.split(".")
    node = mapping
    for key in parents:
        node = node[key]
    if last.startswith("-"):
        del node[last[1:]]
    else:
        node[last] = value
    return mapping


def _write(path: Path, text: str, mapping: dict[str, Any]) -> dict[str, Any]:
    """Overwrite a source file (to break the data, not the mapping); return the mapping."""
    path.write_text(text)
    return mapping


#: (case, how to break the mapping or the data, the expected message as a regex)
BAD_INPUTS: list[tuple[str, Callable[[dict[str, Any], Path], dict[str, Any] | str], str]] = [
    (
        "wrong path",
        lambda m, d: _set(m, "tables.orders.path", "data/nope.csv"),
        r"^orders: file not found: .*data/nope\.csv$",
    ),
    (
        "yaml syntax",
        lambda m, d: "tables:\n  orders: [unclosed\n",
        r"mapping\.yaml: invalid YAML at line \d+, column \d+",
    ),
    (
        "unknown key",
        lambda m, d: _set(m, "tables.orders.colums", {}),
        r"mapping\.yaml: tables\.orders\.colums: unknown key$",
    ),
    (
        "unknown table",
        lambda m, d: _set(m, "tables.invoices", {"path": "x.csv"}),
        r"tables\.invoices: not a contract table",
    ),
    (
        "missing required table",
        lambda m, d: _set(m, "tables.-customers", None),
        r"tables: customers must be mapped",
    ),
    (
        "neither orders nor subscriptions",
        lambda m, d: _set(m, "tables.-orders", None),
        r"tables: map orders or subscriptions \(what customers buy or subscribe to",
    ),
    (
        "failing sql column",
        lambda m, d: _set(m, "tables.orders.columns.quantity", {"sql": "CAST(nope AS INTEGER)"}),
        r"^orders\.quantity: sql 'CAST\(nope AS INTEGER\)': DuckDB cannot evaluate it: .*nope",
    ),
    (
        "aggregate sql column",
        lambda m, d: _set(m, "tables.orders.columns.quantity", {"sql": "count(*)"}),
        r"^orders\.quantity: sql 'count\(\*\)' gives 1 rows for 3 source rows",
    ),
    (
        "failing filter",
        lambda m, d: _set(m, "tables.orders.filter", "total >< 3"),
        r"^orders\.filter 'total >< 3': DuckDB cannot evaluate it: Catalog Error",
    ),
    (
        "unknown contract column",
        lambda m, d: _set(m, "tables.orders.columns.amout", "total"),
        r"tables\.orders\.columns\.amout: not a column of orders",
    ),
    (
        "required column unmapped",
        lambda m, d: _set(m, "tables.orders.columns.-quantity", None),
        r"tables\.orders: no value for required column\(s\) quantity",
    ),
    (
        "attributes on orders",
        lambda m, d: _set(m, "tables.orders.attributes", {"ref": "categorical"}),
        r"tables\.orders\.attributes: only customers, leads may carry custom attributes",
    ),
    (
        "bad attribute kind",
        lambda m, d: _set(m, "tables.customers.attributes.tier", "text"),
        r"tables\.customers\.attributes\.tier: Input should be 'categorical' or 'numeric'",
    ),
    (
        "yaml boolean constant",
        lambda m, d: _set(m, "tables.customers.constants.segment", False),
        r"constants\.segment: False is a YAML boolean; quote the text",
    ),
    (
        "unknown source column",
        lambda m, d: _set(m, "tables.orders.columns.amount", "amt"),
        (
            r"^orders\.amount: source column 'amt' not in data/orders\.csv "
            r"\(columns: ref, client, when, n, total\)$"
        ),
    ),
    (
        "corrupt parquet",
        lambda m, d: _write(
            d / "orders.parquet",
            "PAR1 garbage",
            _set(m, "tables.orders.path", "data/orders.parquet"),
        ),
        r"^orders: cannot read .*orders\.parquet as parquet: ",
    ),
    (
        "corrupt csv",
        lambda m, d: _write(d / "orders.csv", ORDERS_CSV + "A4,007,2024-04-04,1,1,oops,more\n", m),
        r"^orders: cannot read .*orders\.csv as csv: ",
    ),
    (
        "unparseable timestamps",
        lambda m, d: _set(m, "tables.orders.timestamp_format", {"ordered_at": "%Y-%m-%d"}),
        (
            r"^orders\.ordered_at: source column 'when': 2 value\(s\) are not timestamps in format "
            r"'%Y-%m-%d' \(e\.g\. '2024-04-02T08:00:00Z'\)$"
        ),
    ),
    (
        "non-numeric attribute",
        lambda m, d: _write(
            d / "customers.csv",
            CUSTOMERS_CSV
            + "009;01/01/2024 00:00;FR;many;gold\n010;01/01/2024 00:00;FR;lots;gold\n",
            m,
        ),
        r"^customers\.employees: numeric attribute: 2 value\(s\) are not numbers \(e\.g\. 'many'\)$",
    ),
    (
        "non-numeric amount",
        lambda m, d: _write(d / "orders.csv", ORDERS_CSV + "A4,007,2024-04-04,1,12$\n", m),
        r"^orders\.amount: source column 'total': 1 value\(s\) are not numbers \(e\.g\. '12\$'\)$",
    ),
    (
        "fails validation",
        lambda m, d: _write(d / "orders.csv", ORDERS_CSV + "A4,999,2024-04-04,1,1\n", m),
        r"^imported data breaks the contract .*nothing written.*orders\.customer_id: .*unknown customers",
    ),
]


@pytest.mark.parametrize(("case", "breaker", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_clear_error_and_leaves_the_lake_alone(
    case: str,
    breaker: Callable[[dict[str, Any], Path], dict[str, Any] | str],
    message: str,
    shop: Callable[..., Path],
    tmp_path: Path,
) -> None:
    out = tmp_path / "lake"
    import_lake(shop(_mapping()), out)  # a previous good lake
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    broken = breaker(_mapping(), tmp_path / "data")
    if isinstance(broken, str):
        mapping_path = tmp_path / "mapping.yaml"
        mapping_path.write_text(broken)
    else:
        mapping_path = shop(broken)
    with pytest.raises(CrmscoreError) as info:
        import_lake(mapping_path, out)

    text = str(info.value)
    assert "\n" not in text
    assert re.search(message, text), text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # No temporary directories left next to the lake either.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "lake", "mapping.yaml"]


def test_mapping_file_missing(tmp_path: Path) -> None:
    with pytest.raises(CrmscoreError, match="mapping file not found"):
        load_mapping(tmp_path / "nope.yaml")


def test_cli_import_ok_and_one_line_error(shop: Callable[..., Path], tmp_path: Path) -> None:
    runner = CliRunner()
    mapping = shop(_mapping())
    ok = runner.invoke(app, ["import", "--mapping", str(mapping), "--out", str(tmp_path / "lake")])
    assert ok.exit_code == 0, ok.output
    assert "customers" in ok.stdout and "employees (numeric)" in ok.stdout

    bad = shop(_set(_mapping(), "tables.orders.path", "data/nope.csv"))
    result = runner.invoke(app, ["import", "--mapping", str(bad), "--out", str(tmp_path / "lake")])
    assert result.exit_code == 1
    # Log lines may precede it, but the error itself is one line, last, without a traceback.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: orders: file not found:"), (
        result.stderr
    )
    assert result.stderr.rstrip().endswith("nope.csv")
    assert "Traceback" not in result.output
