"""One broken fixture per validation rule: the problem names table, column, rule and row count."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from crmdata.validate import Problem, validate_lake
from pipelines.cli import app
from tests.factories import tiny_tables, write_lake

NOW = datetime(2026, 1, 1, tzinfo=UTC)
Tables = dict[str, pl.DataFrame]


def _set(table: str, column: str, values: list) -> Callable[[Tables], None]:
    def mutate(tables: Tables) -> None:
        frame = tables[table]
        tables[table] = frame.with_columns(pl.Series(column, values, dtype=frame[column].dtype, strict=False))

    return mutate


def _with(table: str, column: str, values: list, dtype: pl.DataType | None = None) -> Callable[[Tables], None]:
    """Replace a column with values of any type (to break dtypes)."""

    def mutate(tables: Tables) -> None:
        tables[table] = tables[table].with_columns(pl.Series(column, values, dtype=dtype))

    return mutate


def _drop_column(table: str, column: str) -> Callable[[Tables], None]:
    def mutate(tables: Tables) -> None:
        tables[table] = tables[table].drop(column)

    return mutate


def _drop_table(table: str) -> Callable[[Tables], None]:
    def mutate(tables: Tables) -> None:
        del tables[table]

    return mutate


def _ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


CASES: dict[str, tuple[Callable[[Tables], None], str, str, int, str]] = {
    # name: (mutation, where, rule, rows, message fragment)
    "missing required table": (
        _drop_table("customers"), "customers", "required_table", 0, "required table is missing"),
    "neither orders nor subscriptions": (
        lambda t: [_drop_table(n)(t) for n in ("orders", "subscriptions")] and None,
        "orders or subscriptions", "required_table", 0, "the lake needs orders or subscriptions"),
    "missing required column": (
        _drop_column("orders", "amount"), "orders.amount", "missing_column", 4, "required column is missing"),
    "wrong type": (
        _with("orders", "quantity", ["1", "x", "2", "y"]), "orders.quantity", "dtype", 2, "2 rows are not numbers"),
    "wrong type, not convertible": (
        _with("products", "is_repeatable", ["yes", "no"]), "products.is_repeatable", "dtype", 2, "expected Boolean"),
    "unparseable timestamps": (
        _with("orders", "ordered_at", ["2023-01-06", "06/13/2023", "2023-03-02T10:00:00Z", "soon"]),
        "orders.ordered_at", "timestamp_parse", 2, "2 rows are unparseable timestamps"),
    "duplicate keys": (
        _set("orders", "order_id", ["O1", "O1", "O1", "O4"]), "orders.order_id", "unique_key", 3,
        "3 rows share a duplicate order_id"),
    "broken foreign key": (
        _set("orders", "customer_id", ["C1", "C9", "C8", "C3"]), "orders.customer_id", "foreign_key", 2,
        "2 rows reference unknown customers"),
    "broken foreign key to products": (
        _set("orders", "product_id", ["P1", "P7", "P2", None]), "orders.product_id", "foreign_key", 1,
        "1 rows reference unknown products"),
    "future timestamps": (
        _set("orders", "ordered_at", [_ts(2023, 1, 6), _ts(2030, 1, 1), _ts(2031, 1, 1), _ts(2024, 2, 11)]),
        "orders.ordered_at", "future", 2, "2 rows are in the future"),
    "timestamps before 1990": (
        _set("customers", "signup_at", [_ts(1970, 1, 1), _ts(2023, 3, 1), _ts(2024, 2, 10)]),
        "customers.signup_at", "too_old", 1, "1 rows are before 1990-01-01"),
    "negative amounts": (
        _set("orders", "amount", [120.0, -46.5, 31.0, 9.99]), "orders.amount", "negative", 1, "1 rows are negative"),
    "negative quantities": (
        _set("orders", "quantity", [1, -3, -2, 1]), "orders.quantity", "negative", 2, "2 rows are negative"),
    "values outside the allowed set": (
        _set("interactions", "type", ["login", "nps", "fax", "csat"]), "interactions.type", "allowed_values", 1,
        "1 rows have values outside the allowed set (e.g. 'fax'"),
    "nulls in a required column": (
        _set("customers", "segment", ["smb", None, None]), "customers.segment", "not_null", 2, "2 rows are null"),
    "country pattern": (
        _set("customers", "country", ["US", "Germany", "FR"]), "customers.country", "pattern", 1,
        "1 rows do not match"),
    "ended before started": (
        _set("subscriptions", "ended_at", [None, _ts(2022, 1, 1)]), "subscriptions.ended_at", "ordered", 1,
        "1 rows have ended_at before started_at"),
    "survey out of range": (
        _set("interactions", "value", [None, 11.0, None, 4.0]), "interactions.value", "survey_range", 1,
        "1 nps rows have no value or one outside 0–10"),
    "lead both converted and lost": (
        _set("leads", "lost_at", [_ts(2023, 2, 1), _ts(2023, 9, 1), None]), "leads.lost_at", "one_outcome", 1,
        "1 rows are both converted and lost"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_reports_table_column_rule_and_count(tmp_path: Path, case: str) -> None:
    mutate, where, rule, rows, fragment = CASES[case]
    tables = tiny_tables()
    mutate(tables)
    problems = validate_lake(write_lake(tmp_path / "lake", tables), now=NOW)
    errors = [p for p in problems if p.severity == "error"]
    assert [(p.where, p.rule, p.rows) for p in errors] == [(where, rule, rows)], errors
    assert fragment in str(errors[0])
    assert str(errors[0]).startswith(f"{where}: ")


def test_valid_lake_has_no_problems(tmp_path: Path) -> None:
    assert validate_lake(write_lake(tmp_path / "lake"), now=NOW) == []


def test_customers_and_orders_alone_are_a_valid_lake(tmp_path: Path) -> None:
    tables = {k: v for k, v in tiny_tables().items() if k in ("customers", "orders")}
    assert validate_lake(write_lake(tmp_path / "lake", tables), now=NOW) == []


def test_customers_and_subscriptions_alone_are_a_valid_lake(tmp_path: Path) -> None:
    tables = {k: v for k, v in tiny_tables().items() if k in ("customers", "subscriptions")}
    assert validate_lake(write_lake(tmp_path / "lake", tables), now=NOW) == []


def test_string_timestamps_in_iso_format_are_accepted(tmp_path: Path) -> None:
    tables = tiny_tables()
    _with("orders", "ordered_at", ["2023-01-06", "2023-02-01T00:00:00", "2023-03-02T10:00:00Z", "2024-02-11"])(tables)
    assert validate_lake(write_lake(tmp_path / "lake", tables), now=NOW) == []


def test_custom_attributes_are_checked_against_their_declared_kind(tmp_path: Path) -> None:
    tables = tiny_tables()
    tables["customers"] = tables["customers"].with_columns(
        pl.Series("loyalty_tier", ["gold", None, "silver"]),
        pl.Series("credit_limit", ["1000", "n/a", "250.5"]),
    )
    attrs = {"customers": {"loyalty_tier": "categorical", "credit_limit": "numeric"}}
    problems = validate_lake(write_lake(tmp_path / "lake", tables, attrs), now=NOW)
    assert [(p.where, p.rule, p.rows) for p in problems] == [("customers.credit_limit", "dtype", 1)]


def test_declared_attribute_missing_and_undeclared_column(tmp_path: Path) -> None:
    tables = tiny_tables()
    tables["leads"] = tables["leads"].with_columns(pl.lit("x").alias("favourite_colour"))
    problems = validate_lake(write_lake(tmp_path / "lake", tables, {"leads": {"budget": "numeric"}}), now=NOW)
    by_rule = {(p.where, p.rule, p.severity) for p in problems}
    assert by_rule == {
        ("leads.budget", "missing_column", "error"),
        ("leads.favourite_colour", "undeclared_column", "warning"),
    }


def test_corrupt_parquet_is_one_problem(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    (lake / "orders.parquet").write_bytes(b"PAR1 this is not parquet")
    problems = validate_lake(lake, now=NOW)
    assert [(p.where, p.rule) for p in problems if p.severity == "error"] == [("orders", "readable")]


def test_cli_exits_1_with_a_table_of_problems(tmp_path: Path) -> None:
    tables = tiny_tables()
    _set("orders", "customer_id", ["C1", "C9", "C8", "C3"])(tables)
    lake = write_lake(tmp_path / "lake", tables)
    result = CliRunner().invoke(app, ["validate", str(lake)])
    assert result.exit_code == 1
    assert "orders.customer_id" in result.output and "unknown customers" in result.output


def test_cli_valid_lake_exits_0(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(write_lake(tmp_path / "lake"))])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_cli_wrong_path_is_one_line_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such lake directory" in result.output
    assert "Traceback" not in result.output


def test_problem_renders_like_the_contract_example() -> None:
    p = Problem(table="orders", column="customer_id", rule="foreign_key", rows=12,
                message="12 rows reference unknown customers")
    assert str(p) == "orders.customer_id: 12 rows reference unknown customers"
