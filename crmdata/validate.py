"""Validate a lake against the data contract.

Column-level rules (dtype, nullability, allowed sets, ranges, patterns, unique
keys) are pandera schemas built from ``crmdata.contract``; pandera (polars
backend) does the checking. What pandera has no notion of — whether a table or
column exists, parsing strings into timestamps, foreign keys across tables,
ordered timestamp pairs, survey value ranges — is checked here with polars
expressions. Every problem names table, column, rule and number of rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandera.polars as pa
import polars as pl
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table as RichTable

from crmdata.contract import (
    ACTIVITY_TABLES,
    CUSTOM_ATTRIBUTE_DTYPES,
    EARLIEST_TIMESTAMP,
    SURVEY_RANGES,
    TABLES,
    TABLES_WITH_CUSTOM_ATTRIBUTES,
    TIMESTAMP,
    Column,
    Table,
)
from crmdata.lake import MANIFEST, LakeError, LakeManifest, read_manifest, table_path

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
HASH_SEED = 7


class Problem(BaseModel):
    """One broken rule: where, which rule, how many rows, and what it means."""

    table: str
    column: str | None = None
    rule: str
    rows: int
    message: str
    severity: Severity = "error"

    @property
    def where(self) -> str:
        return f"{self.table}.{self.column}" if self.column else self.table

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def validate_lake(lake: Path, now: datetime | None = None) -> list[Problem]:
    """Every contract problem in ``lake``; an empty list means the lake is valid.

    ``now`` bounds "timestamps in the future" (default: the current time).
    """
    lake = Path(lake)
    if not lake.is_dir():
        raise LakeError(f"{lake}: no such lake directory")
    try:
        manifest = read_manifest(lake)
    except LakeError as exc:
        return [Problem(table=MANIFEST, rule="manifest", rows=0, message=str(exc))]
    now = now or datetime.now(UTC)
    problems: list[Problem] = []
    frames: dict[str, pl.DataFrame] = {}

    problems += _check_files(lake, manifest)
    if not any(table_path(lake, name).exists() for name in ACTIVITY_TABLES):
        problems.append(
            Problem(table=" or ".join(ACTIVITY_TABLES), rule="required_table", rows=0,
                    message="the lake needs orders or subscriptions (what customers buy or subscribe "
                            "to); neither was found")
        )
    for name, spec in TABLES.items():
        path = table_path(lake, name)
        if not path.exists():
            if spec.required:
                problems.append(
                    Problem(table=name, rule="required_table", rows=0,
                            message=f"required table is missing ({path.name} not found)")
                )
            continue
        try:
            raw = pl.read_parquet(path)
        except Exception as exc:  # noqa: BLE001  (a truncated or foreign file: polars raises several types)
            problems.append(
                Problem(table=name, rule="readable", rows=0,
                        message=f"cannot read {path.name} as parquet: {_first_line(exc)}")
            )
            continue
        frame, found = _coerce(spec, raw, manifest)
        problems += found
        problems += _check_columns(spec, frame, set(raw.columns), manifest, now)
        frames[name] = frame

    problems += _check_foreign_keys(frames)
    problems += _check_row_rules(frames)
    log.debug("validated %s: %d tables, %d problems", lake, len(frames), len(problems))
    return problems


def _check_files(lake: Path, manifest: LakeManifest) -> list[Problem]:
    problems = []
    known = {table_path(lake, n).name for n in TABLES}
    for path in sorted(lake.glob("*.parquet")):
        if path.name not in known:
            problems.append(
                Problem(table=path.stem, rule="unknown_table", rows=0, severity="warning",
                        message="not a contract table; it is ignored")
            )
    for name, attrs in manifest.custom_attributes.items():
        if attrs and name not in TABLES_WITH_CUSTOM_ATTRIBUTES:
            problems.append(
                Problem(table=name, rule="custom_attributes", rows=0,
                        message="custom attributes are only allowed on "
                        + " and ".join(TABLES_WITH_CUSTOM_ATTRIBUTES))
            )
    return problems


def _coerce(spec: Table, raw: pl.DataFrame, manifest: LakeManifest) -> tuple[pl.DataFrame, list[Problem]]:
    """Bring present columns to their contract dtype where that is lossless.

    Strings that should be timestamps are parsed (ISO-8601); integers widen to
    floats. What cannot be converted is reported with its row count and the
    column is dropped from further checks (so one wrong type is one problem).
    """
    problems: list[Problem] = []
    columns: dict[str, pl.Series] = {}
    expected: dict[str, pl.DataType] = {c.name: c.dtype for c in spec.columns}
    for name, kind in manifest.attributes(spec.name).items():
        expected[name] = CUSTOM_ATTRIBUTE_DTYPES[kind]
    for name in raw.columns:
        series = raw[name]
        want = expected.get(name)
        if want is None or series.dtype == want:
            columns[name] = series
            continue
        converted, bad, rule, what = _convert(series, want)
        if converted is None:
            problems.append(
                Problem(table=spec.name, column=name, rule=rule, rows=bad,
                        message=f"{bad} rows {what}")
            )
        else:
            columns[name] = converted
    return pl.DataFrame(columns), problems


def _convert(series: pl.Series, want: pl.DataType) -> tuple[pl.Series | None, int, str, str]:
    """(converted or None, failing rows, rule, description of the failure)."""
    have = series.dtype
    if want == TIMESTAMP:
        if isinstance(have, pl.Datetime):
            # Naive timestamps are taken as UTC, as the contract says all timestamps are.
            s = series.dt.replace_time_zone("UTC") if have.time_zone is None else series
            return s.dt.convert_time_zone("UTC").dt.cast_time_unit("us"), 0, "", ""
        if have == pl.Date:
            return series.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"), 0, "", ""
        if have == pl.String:
            parsed = parse_iso_timestamps(series)
            bad = int((parsed.is_null() & series.is_not_null()).sum())
            if bad:
                example = series.filter(parsed.is_null() & series.is_not_null())[0]
                return None, bad, "timestamp_parse", f"are unparseable timestamps (e.g. {example!r})"
            return parsed, 0, "", ""
        return None, series.len(), "dtype", f"have type {have}, expected a UTC timestamp"
    if want == pl.Float64 and have.is_numeric():
        return series.cast(pl.Float64), 0, "", ""
    if want == pl.Int64 and have.is_integer():
        return series.cast(pl.Int64), 0, "", ""
    if want.is_numeric() and have == pl.String:
        cast = series.cast(want, strict=False)
        bad = int((cast.is_null() & series.is_not_null()).sum())
        if bad:
            return None, bad, "dtype", f"are not numbers (type {have}, expected {want})"
        return cast, 0, "", ""
    return None, series.len(), "dtype", f"have type {have}, expected {want}"


#: ISO-8601 shapes accepted in string timestamp columns (offsets are converted to UTC;
#: timestamps without an offset are taken as UTC, as the contract says).
ISO_FORMATS: tuple[str, ...] = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)


def parse_iso_timestamps(series: pl.Series) -> pl.Series:
    """Parse strings in any of the ISO-8601 shapes, row by row; null where none fits."""
    # polars infers one format per column from its first value; real exports mix
    # dates with datetimes, so try each shape and keep the first that parses.
    attempts = [
        series.str.to_datetime(fmt, strict=False, exact=True, time_unit="us", time_zone="UTC")
        for fmt in ISO_FORMATS
    ]
    return pl.select(pl.coalesce(attempts)).to_series().alias(series.name)


def _pandera_schema(spec: Table, present: Iterable[str], manifest: LakeManifest, now: datetime) -> pa.DataFrameSchema:
    cols: dict[str, pa.Column] = {}
    for col in spec.columns:
        if col.name in present:
            cols[col.name] = pa.Column(
                col.dtype,
                checks=_checks(col, now),
                nullable=col.nullable,
            )
    for name, kind in manifest.attributes(spec.name).items():
        if name in present:
            cols[name] = pa.Column(CUSTOM_ATTRIBUTE_DTYPES[kind], nullable=True)
    return pa.DataFrameSchema(cols, name=spec.name, strict=False)


def _checks(col: Column, now: datetime) -> list[pa.Check]:
    checks = []
    if col.allowed is not None:
        checks.append(pa.Check.isin(list(col.allowed)))
    if col.minimum is not None:
        checks.append(pa.Check.ge(col.minimum))
    if col.pattern is not None:
        checks.append(pa.Check.str_matches(col.pattern))
    if col.kind == "timestamp":
        checks.append(pa.Check.ge(EARLIEST_TIMESTAMP))
        checks.append(pa.Check.le(now))
    return checks


def _check_columns(
    spec: Table, frame: pl.DataFrame, present: set[str], manifest: LakeManifest, now: datetime
) -> list[Problem]:
    """Presence of columns (``present``: the file's columns) and the pandera rules.

    ``frame`` holds only the columns that have, or were converted to, their contract dtype.
    """
    problems = []
    for col in spec.columns:
        if col.required and col.name not in present:
            problems.append(
                Problem(table=spec.name, column=col.name, rule="missing_column", rows=frame.height,
                        message="required column is missing")
            )
    declared = manifest.attributes(spec.name)
    for name in declared:
        if name not in present:
            problems.append(
                Problem(table=spec.name, column=name, rule="missing_column", rows=frame.height,
                        message="declared custom attribute is missing")
            )
    contract_cols = set(spec.column_names)
    for name in sorted(present - contract_cols - set(declared)):
        problems.append(
            Problem(table=spec.name, column=name, rule="undeclared_column", rows=0, severity="warning",
                    message="not in the contract and not a declared custom attribute; it is ignored")
        )

    problems += _check_key(spec, frame)
    schema = _pandera_schema(spec, frame.columns, manifest, now)
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        problems += _summarize_failures(spec, exc.failure_cases, now)
    return problems


def _check_key(spec: Table, frame: pl.DataFrame) -> list[Problem]:
    """Duplicate keys, counted as every row that shares its key with another.

    Done here rather than with pandera's ``unique=True``: on 20M string ids pandera
    takes ~11 s. Distinct 64-bit hashes prove distinct ids (~2 s); only when some
    hashes repeat is the exact (slower) duplicate count computed.
    """
    if not spec.key or not set(spec.key) <= set(frame.columns):
        return []
    if len(spec.key) > 1:
        # A compound key (a label table's entity + as_of): small tables, counted directly.
        rows = int(frame.select(spec.key).is_duplicated().sum())
        return [] if rows == 0 else [Problem(table=spec.name, column=",".join(spec.key), rule="unique_key", rows=rows,
                                             message=f"{rows} rows share a duplicate ({', '.join(spec.key)})")]
    ids = frame[spec.key[0]]
    if ids.hash(seed=HASH_SEED).n_unique() == ids.len():
        return []
    rows = int(ids.is_duplicated().sum())
    return [Problem(table=spec.name, column=spec.key[0], rule="unique_key", rows=rows,
                    message=f"{rows} rows share a duplicate {spec.key[0]}")]


def _summarize_failures(spec: Table, failures: pl.DataFrame, now: datetime) -> list[Problem]:
    """Turn pandera's one-row-per-failing-value frame into one problem per (column, check)."""
    counts = (
        failures.group_by("column", "check")
        .agg(pl.len().alias("rows"), pl.col("failure_case").first().alias("example"))
        .sort("column", "check")
    )
    problems = []
    for row in counts.iter_rows(named=True):
        column, check, rows, example = row["column"], str(row["check"]), row["rows"], row["example"]
        rule, message = _describe(spec, column, check, rows, example, now)
        problems.append(Problem(table=spec.name, column=column, rule=rule, rows=rows, message=message))
    return problems


def _describe(spec: Table, column: str, check: str, rows: int, example: object, now: datetime) -> tuple[str, str]:
    if check == "not_nullable":
        return "not_null", f"{rows} rows are null"
    if check in ("field_uniqueness", "unique"):
        return "unique_key", f"{rows} rows share a duplicate {column}"
    if check.startswith("isin"):
        allowed = spec.column(column).allowed or ()
        return "allowed_values", (
            f"{rows} rows have values outside the allowed set (e.g. {example!r}; allowed: {', '.join(allowed)})"
        )
    if check.startswith("str_matches"):
        return "pattern", f"{rows} rows do not match {spec.column(column).pattern} (e.g. {example!r})"
    if check.startswith("greater_than_or_equal_to"):
        if spec.column(column).kind == "timestamp":
            return "too_old", f"{rows} rows are before {EARLIEST_TIMESTAMP:%Y-%m-%d}"
        return "negative", f"{rows} rows are negative (e.g. {example})"
    if check.startswith("less_than_or_equal_to"):
        return "future", f"{rows} rows are in the future (after {now:%Y-%m-%d %H:%M} UTC)"
    if check.startswith("dtype"):
        return "dtype", f"has the wrong type ({example})"
    return re.sub(r"\W+", "_", check).strip("_"), f"{rows} rows fail {check}"


def _check_foreign_keys(frames: dict[str, pl.DataFrame]) -> list[Problem]:
    problems = []
    for name, frame in frames.items():
        for fk in TABLES[name].foreign_keys:
            ref = frames.get(fk.table)
            # An absent optional table (e.g. products) means the reference cannot be checked,
            # not that it is broken; a required table that is absent is reported already.
            if ref is None or fk.column not in frame.columns or fk.ref_column not in ref.columns:
                continue
            if frame[fk.column].dtype != ref[fk.ref_column].dtype:
                continue  # reported as a dtype problem already
            values = frame[fk.column]
            # Compare 64-bit hashes (~2.5x faster than strings on 50M rows). A value whose hash
            # is absent is certainly broken; a broken value is missed only if its hash collides
            # with a valid key's, about (broken × keys) / 2^64 — negligible at CRM sizes.
            known = ref[fk.ref_column].hash(seed=HASH_SEED).unique().implode()
            broken = int((values.is_not_null() & ~values.hash(seed=HASH_SEED).is_in(known)).sum())
            if broken:
                problems.append(
                    Problem(table=name, column=fk.column, rule="foreign_key", rows=broken,
                            message=f"{broken} rows reference {fk.noun}")
                )
    return problems


def _check_row_rules(frames: dict[str, pl.DataFrame]) -> list[Problem]:
    """Rules across columns of one row: ordered timestamps, survey ranges, lead outcomes."""
    problems = []
    for name, frame in frames.items():
        for earlier, later in TABLES[name].ordered:
            if not {earlier, later} <= set(frame.columns):
                continue
            if frame[earlier].dtype != TIMESTAMP or frame[later].dtype != TIMESTAMP:
                continue
            bad = frame.select((pl.col(later) < pl.col(earlier)).sum()).item()
            if bad:
                problems.append(
                    Problem(table=name, column=later, rule="ordered", rows=bad,
                            message=f"{bad} rows have {later} before {earlier}")
                )
    interactions = frames.get("interactions")
    if (interactions is not None and {"type", "value"} <= set(interactions.columns)
            and interactions["value"].dtype == pl.Float64):
        for kind, (low, high) in SURVEY_RANGES.items():
            rows = interactions.filter(pl.col("type") == kind)
            bad = rows.select(
                (pl.col("value").is_null() | (pl.col("value") < low) | (pl.col("value") > high)).sum()
            ).item()
            if bad:
                problems.append(
                    Problem(table="interactions", column="value", rule="survey_range", rows=bad,
                            message=f"{bad} {kind} rows have no value or one outside {low:g}–{high:g}")
                )
    leads = frames.get("leads")
    if leads is not None and {"converted_at", "lost_at"} <= set(leads.columns):
        bad = leads.select((pl.col("converted_at").is_not_null() & pl.col("lost_at").is_not_null()).sum()).item()
        if bad:
            problems.append(
                Problem(table="leads", column="lost_at", rule="one_outcome", rows=bad,
                        message=f"{bad} rows are both converted and lost")
            )
    return problems


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


def render_problems(console: Console, lake: Path, problems: list[Problem]) -> None:
    """Print the problems as a table (or a one-line all-clear)."""
    errors = sum(p.severity == "error" for p in problems)
    if not problems:
        console.print(f"[green]{lake}: valid[/green] (no problems)")
        return
    table = RichTable(title=f"{lake}: {errors} errors, {len(problems) - errors} warnings")
    for header in ("severity", "table.column", "rule", "rows", "problem"):
        table.add_column(header, overflow="fold")
    for p in problems:
        colour = "red" if p.severity == "error" else "yellow"
        table.add_row(f"[{colour}]{p.severity}[/{colour}]", p.where, p.rule, str(p.rows), p.message)
    console.print(table)

