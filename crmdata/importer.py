"""Bring your own data: map CSV/parquet files onto the data contract (``crmscore import``).

A mapping YAML says, per contract table, where the file is and how its columns
become contract columns (renames, timestamp formats, constant fills, generated
ids, derived tables, custom attributes, columns computed by a DuckDB SQL expression and
a row filter). The format is the pydantic models below;
``examples/cdnow/README.md`` documents it next to a worked example. The import
reads and converts every table first, then writes the lake into a temporary
directory, validates it there and only then swaps it into place, so bad input
never leaves a lake behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Group, RenderableType
from rich.table import Table as RichTable
from rich.text import Text

from crmdata.contract import (
    ACTIVITY_TABLES,
    CUSTOM_ATTRIBUTE_DTYPES,
    REQUIRED_TABLES,
    TABLES,
    TABLES_WITH_CUSTOM_ATTRIBUTES,
    TIMESTAMP,
    AttributeKind,
    Column,
    Table,
)
from crmdata.errors import CrmscoreError
from crmdata.lake import LakeManifest, atomic_dir, write_tables

log = logging.getLogger(__name__)

#: ``path: pkg://<package>/<file inside it>`` points into an installed package's data.
PACKAGE_SCHEME = "pkg://"
WHITESPACE = "whitespace"

#: ISO-8601 shapes tried in turn (after normalising "Z" and a space separator), so one
#: column may mix dates, naive datetimes and datetimes with an offset.
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M%z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d",
)
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")

#: YAML gives dates and datetimes for unquoted ISO values; they are constants too.
Constant = str | bool | int | float | datetime | date | None


# --- the mapping file ---------------------------------------------------------------


class _Strict(BaseModel):
    # A typo in a key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(_Strict):
    """How to read a delimited text file."""

    separator: str = Field(
        ",", description="one character, or 'whitespace' for runs of spaces/tabs"
    )
    header: bool = Field(True, description="the first line holds column names")
    column_names: list[str] | None = Field(
        None, description="names for the file's columns, in order"
    )
    null_values: list[str] = Field(default_factory=list, description="strings read as null")

    @field_validator("separator")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if value != WHITESPACE and len(value) != 1:
            raise ValueError(f"must be one character or '{WHITESPACE}', got {value!r}")
        return value


class Derive(_Strict):
    """Build a table from another mapped table: one row per distinct key value."""

    from_table: str = Field(alias="from", description="the mapped table to derive from")
    earliest: dict[str, str] = Field(
        default_factory=dict, description="contract column -> column of `from`, its minimum per key"
    )


class SqlColumn(_Strict):
    """A contract column computed from the source row by DuckDB, e.g. ``{sql: "Churn = 'Yes'"}``.

    Snapshot exports carry facts the contract stores differently (a tenure in months
    instead of a start date, "Yes"/"No" instead of a boolean): one expression per
    column says how, in a language every analyst reads.
    """

    sql: str = Field(min_length=1, description="a DuckDB SQL expression over the source file's columns")


class TableMapping(_Strict):
    """How one contract table is made from one source file (or derived from another table)."""

    path: str | None = None
    format: Literal["csv", "parquet"] | None = None
    csv: CsvOptions = CsvOptions()
    derive: Derive | None = None
    columns: dict[str, str | SqlColumn] = Field(default_factory=dict)
    filter: str | None = Field(None, description="a DuckDB SQL predicate: only rows where it is true are kept")
    timestamp_format: dict[str, str] = Field(default_factory=dict)
    timezone: str = Field("UTC", description="zone of timestamps that carry no offset")
    constants: dict[str, Constant] = Field(default_factory=dict)
    generate_ids: list[str] = Field(default_factory=list)
    attributes: dict[str, AttributeKind] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TableMapping:
        if (self.path is None) == (self.derive is None):
            raise ValueError("give exactly one of `path` or `derive`")
        if self.derive is not None and (self.columns or self.attributes or self.generate_ids or self.filter):
            raise ValueError("a derived table takes only `derive` and `constants`")
        return self


class Mapping(_Strict):
    """The whole mapping file."""

    name: str | None = Field(None, description="what the data is, recorded in the lake manifest")
    tables: dict[str, TableMapping]


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote, for the CLI to print."""

    out: Path
    rows: dict[str, int]
    custom_attributes: dict[str, dict[str, AttributeKind]]
    warnings: list[str] = field(default_factory=list)

    def render(self) -> RenderableType:
        grid = RichTable(title=f"imported lake → {self.out}", title_justify="left")
        grid.add_column("table")
        grid.add_column("rows", justify="right")
        grid.add_column("custom attributes")
        for name, rows in self.rows.items():
            attrs = self.custom_attributes.get(name, {})
            grid.add_row(name, f"{rows:,}", ", ".join(f"{a} ({k})" for a, k in attrs.items()))
        notes = [Text(f"warning: {w}", style="yellow") for w in self.warnings]
        return Group(grid, *notes)


# --- entry point -------------------------------------------------------------------


def import_lake(mapping_path: Path, out: Path) -> ImportSummary:
    """Read the mapped files, convert them to the contract, validate, and write ``out`` atomically."""
    mapping = load_mapping(mapping_path)
    base = mapping_path.absolute().parent
    tables: dict[str, pl.DataFrame] = {}
    attributes: dict[str, dict[str, AttributeKind]] = {}
    # Source tables first, then derived ones (which read the converted source tables).
    for name in sorted(mapping.tables, key=lambda n: mapping.tables[n].derive is not None):
        spec = mapping.tables[name]
        if spec.derive is not None:
            tables[name] = _derive(TABLES[name], spec, tables[spec.derive.from_table])
        else:
            source = _read_source(name, spec, base)
            tables[name] = _map_table(TABLES[name], spec, source)
            if spec.attributes:
                attributes[name] = dict(spec.attributes)
        log.debug("%s: %d rows", name, tables[name].height)

    # validate.py is imported here, not at the top, so reading a mapping never needs it.
    from crmdata.validate import validate_lake

    ordered = {name: tables[name] for name in TABLES if name in tables}
    manifest = LakeManifest(
        source=f"import {mapping.name or mapping_path.name}", custom_attributes=attributes
    )
    with atomic_dir(out) as tmp:
        write_tables(tmp, ordered, manifest)
        problems = validate_lake(tmp)
        errors = [str(p) for p in problems if p.severity == "error"]
        if errors:
            # Raising inside atomic_dir discards the temporary lake; `out` stays as it was.
            raise CrmscoreError(
                f"imported data breaks the contract ({len(errors)} problem(s), nothing written): "
                + "; ".join(errors)
            )
    # Warnings are shown by ImportSummary.render, not logged too, so the CLI prints them once.
    warnings = [str(p) for p in problems if p.severity != "error"]
    return ImportSummary(
        out=out.absolute(),
        rows={name: frame.height for name, frame in ordered.items()},
        custom_attributes=attributes,
        warnings=warnings,
    )


def load_mapping(path: Path) -> Mapping:
    """Parse and check a mapping file; every problem is a one-line CrmscoreError naming the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrmscoreError(f"mapping file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CrmscoreError(f"{path}: cannot read mapping ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise CrmscoreError(f"{path}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise CrmscoreError(f"{path}: the mapping must be a YAML mapping with a `tables:` key")
    try:
        mapping = Mapping.model_validate(raw)
    except ValidationError as exc:
        raise CrmscoreError(f"{path}: {_describe(exc)}") from None
    try:
        _check_against_contract(mapping)
    except CrmscoreError as exc:
        raise CrmscoreError(f"{path}: {exc}") from None
    return mapping


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as 'key.path: message', with pydantic jargon made plain."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return "; ".join(parts)


def _check_against_contract(mapping: Mapping) -> None:
    """Everything about the mapping that needs the contract: names, coverage, derive sources."""
    unknown = [n for n in mapping.tables if n not in TABLES]
    if unknown:
        raise CrmscoreError(
            f"tables.{unknown[0]}: not a contract table (tables: {', '.join(TABLES)})"
        )
    missing = [n for n in REQUIRED_TABLES if n not in mapping.tables]
    if missing:
        raise CrmscoreError(f"tables: {' and '.join(missing)} must be mapped (required tables)")
    if not any(n in mapping.tables for n in ACTIVITY_TABLES):
        raise CrmscoreError(
            f"tables: map {' or '.join(ACTIVITY_TABLES)} (what customers buy or subscribe to; "
            "a subscription business needs no orders)"
        )
    for name, spec in mapping.tables.items():
        _check_table(TABLES[name], spec, mapping)


def _check_table(table: Table, spec: TableMapping, mapping: Mapping) -> None:
    where = f"tables.{table.name}"
    known = table.column_names

    def must_be_columns(key: str, names: list[str], kinds: tuple[str, ...] | None = None) -> None:
        for col in names:
            if col not in known:
                raise CrmscoreError(
                    f"{where}.{key}.{col}: not a column of {table.name} ({', '.join(known)})"
                )
            if kinds and table.column(col).kind not in kinds:
                raise CrmscoreError(f"{where}.{key}.{col}: not a {'/'.join(kinds)} column")

    must_be_columns("columns", list(spec.columns))
    must_be_columns("constants", list(spec.constants))
    must_be_columns("timestamp_format", list(spec.timestamp_format), ("timestamp",))
    for col in spec.generate_ids:
        if col not in table.key:
            raise CrmscoreError(
                f"{where}.generate_ids: {col!r} is not the key of {table.name} ({', '.join(table.key) or 'none'})"
            )
    for col in spec.timestamp_format:
        if col not in spec.columns:
            raise CrmscoreError(
                f"{where}.timestamp_format.{col}: the column is not mapped under `columns`"
            )
    for col, value in spec.constants.items():
        column = table.column(col)
        if value is None and not column.nullable:
            raise CrmscoreError(f"{where}.constants.{col}: null, but {col} may not be null")
        if isinstance(value, bool) and column.kind in ("id", "str"):
            # YAML 1.1 reads NO, yes, off... as booleans (Norway becomes False).
            raise CrmscoreError(
                f"{where}.constants.{col}: {value} is a YAML boolean; quote the text"
            )

    filled: list[str] = [*spec.columns, *spec.constants, *spec.generate_ids]
    if spec.derive is not None:
        filled += _check_derive(table, spec.derive, mapping)
    twice = sorted({c for c in filled if filled.count(c) > 1})
    if twice:
        raise CrmscoreError(
            f"{where}: {', '.join(twice)} filled more than once (columns/constants/generate_ids/derive)"
        )
    unfilled = [c.name for c in table.columns if c.required and c.name not in filled]
    if unfilled:
        raise CrmscoreError(
            f"{where}: no value for required column(s) {', '.join(unfilled)} "
            "(map them under `columns`, or fill them under `constants`; null for a nullable column)"
        )

    if spec.attributes and table.name not in TABLES_WITH_CUSTOM_ATTRIBUTES:
        raise CrmscoreError(
            f"{where}.attributes: only {', '.join(TABLES_WITH_CUSTOM_ATTRIBUTES)} may carry custom attributes"
        )
    clash = [a for a in spec.attributes if a in known]
    if clash:
        raise CrmscoreError(
            f"{where}.attributes.{clash[0]}: is a contract column; map it under `columns`"
        )


def _check_derive(table: Table, derive: Derive, mapping: Mapping) -> list[str]:
    """Check a derive rule; return the contract columns it fills."""
    where = f"tables.{table.name}.derive"
    source = mapping.tables.get(derive.from_table)
    if source is None or source.derive is not None:
        raise CrmscoreError(
            f"{where}.from: {derive.from_table!r} must be another table mapped from a file"
        )
    if len(table.key) != 1:
        raise CrmscoreError(f"{where}: {table.name} has no single key column to derive rows from")
    key = table.key[0]
    source_table = TABLES[derive.from_table]
    provided = {*source.columns, *source.constants, *source.generate_ids}
    if key not in provided:
        raise CrmscoreError(
            f"{where}.from: {derive.from_table} has no mapped {key} to derive rows from"
        )
    for target, src in derive.earliest.items():
        if target not in table.timestamp_columns:
            raise CrmscoreError(
                f"{where}.earliest.{target}: not a timestamp column of {table.name}"
            )
        if src not in provided or source_table.column(src).kind != "timestamp":
            raise CrmscoreError(
                f"{where}.earliest.{target}: {src!r} is not a mapped timestamp of {derive.from_table}"
            )
    return [key, *derive.earliest]


# --- reading sources ---------------------------------------------------------------


def resolve_path(raw: str, base: Path) -> Path:
    """A mapping path: ``pkg://package/file`` (installed package data), else relative to the mapping.

    Environment variables (``$DATA/orders.csv``) and ``~`` are expanded first.
    """
    if raw.startswith(PACKAGE_SCHEME):
        package, _, inner = raw.removeprefix(PACKAGE_SCHEME).partition("/")
        # find_spec on a top-level name locates the package without importing it.
        spec = importlib.util.find_spec(package) if package.isidentifier() else None
        if spec is None:
            raise CrmscoreError(f"{raw}: package {package!r} is not installed")
        roots = spec.submodule_search_locations
        root = Path(roots[0]) if roots else Path(spec.origin or "").parent
        return root / inner
    return base / Path(os.path.expandvars(raw)).expanduser()


def _read_source(name: str, spec: TableMapping, base: Path) -> pl.DataFrame:
    assert spec.path is not None  # guaranteed by TableMapping._one_source
    path = resolve_path(spec.path, base)
    if not path.is_file():
        raise CrmscoreError(f"{name}: file not found: {path}")
    fmt = spec.format or ("parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv")
    log.debug("%s: reading %s (%s)", name, path, fmt)
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(path)
        elif spec.csv.separator == WHITESPACE:
            frame = _read_whitespace(name, path, spec.csv)
        else:
            # Everything as text: ids keep leading zeros, and conversion errors are ours to report.
            frame = pl.read_csv(
                path,
                separator=spec.csv.separator,
                has_header=spec.csv.header,
                infer_schema=False,
                null_values=spec.csv.null_values or None,
            )
    except CrmscoreError:
        raise
    except Exception as exc:  # polars raises many types for a damaged or foreign file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CrmscoreError(f"{name}: cannot read {path} as {fmt}: {detail}") from exc
    names = spec.csv.column_names
    if fmt == "csv" and names is not None and spec.csv.separator != WHITESPACE:
        if len(names) != frame.width:
            raise CrmscoreError(
                f"{name}: csv.column_names has {len(names)} names but {path} has {frame.width} columns"
            )
        frame.columns = names
    return frame


def _read_whitespace(name: str, path: Path, opts: CsvOptions) -> pl.DataFrame:
    """Fields separated by runs of blanks (fixed-width style dumps such as CDNOW); no quoting."""
    lines = pl.Series("line", path.read_text(encoding="utf-8").splitlines())
    fields = pl.DataFrame({"fields": lines.str.extract_all(r"\S+")}).with_row_index(
        "line", offset=1
    )
    fields = fields.filter(pl.col("fields").list.len() > 0)
    if fields.is_empty():
        raise CrmscoreError(f"{name}: {path} is empty")
    width = fields["fields"][0].len()
    ragged = fields.filter(pl.col("fields").list.len() != width)
    if not ragged.is_empty():
        raise CrmscoreError(
            f"{name}: {ragged.height} line(s) of {path} do not have {width} fields like the first "
            f"(e.g. line {ragged['line'][0]})"
        )
    if opts.header:
        header, fields = fields["fields"][0].to_list(), fields.slice(1)
    else:
        header = [f"column_{i + 1}" for i in range(width)]
    names = opts.column_names or header
    if len(names) != width:
        raise CrmscoreError(
            f"{name}: csv.column_names has {len(names)} names but {path} has {width} fields"
        )
    frame = fields.select(pl.col("fields").list.get(i).alias(n) for i, n in enumerate(names))
    if opts.null_values:
        frame = frame.with_columns(pl.all().replace(opts.null_values, None))
    return frame


# --- converting to the contract --------------------------------------------------


def _map_table(table: Table, spec: TableMapping, source: pl.DataFrame) -> pl.DataFrame:
    """Filter, rename, compute, convert, fill constants and ids; contract columns first, then
    custom attributes."""
    assert spec.path is not None
    sql = _SourceSql(table.name, source) if spec.filter or _computed(spec) else None
    if sql is not None and spec.filter:
        source = sql.keep(spec.filter)
    for target, src in [*spec.columns.items(), *((a, a) for a in spec.attributes)]:
        if isinstance(src, SqlColumn):
            continue
        if src not in source.columns:
            raise CrmscoreError(
                f"{table.name}.{target}: source column {src!r} not in {spec.path} "
                f"(columns: {', '.join(source.columns)})"
            )
    height = source.height
    out: list[pl.Series] = []
    for column in table.columns:
        name = column.name
        if name in spec.columns:
            src = spec.columns[name]
            if isinstance(src, SqlColumn):
                assert sql is not None  # made above whenever a column is computed
                values, where = sql.column(name, src.sql), f"{table.name}.{name}: sql {src.sql!r}"
            else:
                values, where = source[src], f"{table.name}.{name}: source column {src!r}"
            out.append(_convert(values, column, spec, where).alias(name))
        elif name in spec.constants:
            out.append(_constant(table, column, spec, height))
        elif name in spec.generate_ids:
            # Row numbers in file order: stable across re-imports as long as the file's order is.
            out.append(pl.int_range(1, height + 1, eager=True).cast(pl.String).alias(name))
    for attr, kind in spec.attributes.items():
        out.append(_attribute(source[attr], kind, f"{table.name}.{attr}").alias(attr))
    return pl.DataFrame(out)


def _computed(spec: TableMapping) -> bool:
    return any(isinstance(src, SqlColumn) for src in spec.columns.values())


class _SourceSql:
    """DuckDB over one source file's rows: the ``filter`` and the ``sql:`` columns.

    A failing expression is the user's to fix, so its error names the table, the
    column (or the filter) and DuckDB's own message, and nothing is written.
    """

    def __init__(self, table: str, source: pl.DataFrame) -> None:
        import duckdb

        self.table = table
        self.con = duckdb.connect()
        self._use(source)

    def _use(self, source: pl.DataFrame) -> None:
        self.rows = source.height
        self.con.register("source", source.to_arrow())

    def _run(self, query: str, what: str) -> pl.DataFrame:
        import duckdb

        try:
            return self.con.sql(query).pl()
        except duckdb.Error as exc:
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CrmscoreError(f"{self.table}.{what}: DuckDB cannot evaluate it: {message}") from None

    def keep(self, predicate: str) -> pl.DataFrame:
        """The rows where ``predicate`` is true (null counts as false, as in SQL)."""
        kept = self._run(f"SELECT * FROM source WHERE ({predicate})", f"filter {predicate!r}")
        log.info("%s: the filter keeps %d of %d rows", self.table, kept.height, self.rows)
        self._use(kept)
        return kept

    def column(self, name: str, expression: str) -> pl.Series:
        # A projection over one registered table keeps the rows in order (DuckDB's
        # preserve_insertion_order, on by default), so the result lines up with the source.
        frame = self._run(f"SELECT ({expression}) AS value FROM source", f"{name}: sql {expression!r}")
        if frame.height != self.rows:
            raise CrmscoreError(
                f"{self.table}.{name}: sql {expression!r} gives {frame.height} rows for {self.rows} "
                "source rows (an aggregate? it must give one value per row)"
            )
        return frame.to_series().alias(name)


def _derive(table: Table, spec: TableMapping, source: pl.DataFrame) -> pl.DataFrame:
    """One row per distinct key of the source table, plus the `earliest` aggregates and constants."""
    assert spec.derive is not None
    key = table.key[0]
    frame = (
        source.filter(pl.col(key).is_not_null())
        .group_by(key)
        .agg(pl.col(src).min().alias(target) for target, src in spec.derive.earliest.items())
        .sort(key)
    )
    constants = [_constant(table, table.column(c), spec, frame.height) for c in spec.constants]
    frame = frame.with_columns(constants)
    return frame.select(c.name for c in table.columns if c.name in frame.columns)


def _constant(table: Table, column: Column, spec: TableMapping, height: int) -> pl.Series:
    value = spec.constants[column.name]
    where = f"{table.name}.{column.name}: constant {value!r}"
    one = pl.Series(column.name, [None if value is None else str(value)], dtype=pl.String)
    return _convert(one, column, spec, where).new_from_index(0, height)


def _attribute(series: pl.Series, kind: AttributeKind, where: str) -> pl.Series:
    if kind == "numeric":
        return _to_float(series, f"{where}: numeric attribute")
    return _to_text(series).cast(CUSTOM_ATTRIBUTE_DTYPES[kind])


def _convert(series: pl.Series, column: Column, spec: TableMapping, where: str) -> pl.Series:
    """One source column in the contract dtype, or a CrmscoreError counting the values that fail."""
    if column.kind in ("id", "str"):
        return _to_text(series)
    if column.kind == "float":
        return _to_float(series, where)
    if column.kind == "int":
        if series.dtype.is_integer():
            return series.cast(pl.Int64)
        values = _to_float(series, where)
        fractional = values.is_not_null() & (values != values.floor())
        _fail(series, fractional, where, "not whole numbers")
        return values.cast(pl.Int64)
    if column.kind == "bool":
        return _to_bool(series, where)
    return _to_timestamp(series, spec.timestamp_format.get(column.name), spec.timezone, where)


def _fail(source: pl.Series, bad: pl.Series, where: str, what: str) -> None:
    """Raise when ``bad`` marks any row: how many, and one offending source value."""
    count = int(bad.sum())
    if count:
        example = source.filter(bad)[0]
        raise CrmscoreError(f"{where}: {count:,} value(s) are {what} (e.g. {example!r})")


def _lost(source: pl.Series, converted: pl.Series) -> pl.Series:
    """Rows that had a value and lost it in a non-strict cast: the ones that failed to parse."""
    return source.is_not_null() & converted.is_null()


def _to_text(series: pl.Series) -> pl.Series:
    if series.dtype.is_float():
        # Parquet often stores integer ids as floats (1.0); the id is "1", not "1.0".
        whole = (series == series.floor()).fill_null(True).all()
        series = series.cast(pl.Int64) if whole else series
    text = series.cast(pl.String)
    # Padding in exported CSVs is never part of an id or a category.
    return text.str.strip_chars()


def _to_float(series: pl.Series, where: str) -> pl.Series:
    source = series.str.strip_chars() if series.dtype == pl.String else series
    values = source.cast(pl.Float64, strict=False)
    _fail(series, _lost(source, values), where, "not numbers")
    return values


def _to_bool(series: pl.Series, where: str) -> pl.Series:
    if series.dtype == pl.Boolean:
        return series
    if series.dtype.is_numeric():
        return series.cast(pl.Boolean)
    words = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}
    values = (
        _to_text(series)
        .str.to_lowercase()
        .replace_strict(words, default=None, return_dtype=pl.Boolean)
    )
    _fail(
        series,
        _lost(series, values),
        where,
        f"not booleans ({'/'.join(_TRUE)} or {'/'.join(_FALSE)})",
    )
    return values


def _to_timestamp(series: pl.Series, fmt: str | None, zone: str, where: str) -> pl.Series:
    """Parse to UTC microseconds; values without an offset are taken to be in ``zone``."""
    if series.dtype == pl.Date or isinstance(series.dtype, pl.Datetime):
        values = series.cast(pl.Datetime("us", getattr(series.dtype, "time_zone", None)))
    else:
        text = _to_text(series)
        if fmt is not None:
            values = text.str.to_datetime(fmt, strict=False, time_unit="us")
        else:
            iso = text.str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T").str.replace(
                r"[Zz]$", "+00:00"
            )
            tries = [
                _as_utc(iso.str.to_datetime(f, strict=False, time_unit="us"), zone).alias(str(i))
                for i, f in enumerate(_ISO_FORMATS)
            ]
            values = pl.DataFrame(tries).select(pl.coalesce(pl.all())).to_series()
        what = (
            f"not timestamps in format {fmt!r}"
            if fmt
            else "not ISO-8601 timestamps (set timestamp_format)"
        )
        _fail(series, _lost(text, values), where, what)
    values = _as_utc(values, zone)
    # A wall-clock time skipped by a DST change has no UTC instant; count it as unparseable.
    _fail(series, _lost(series, values), where, f"not valid times in {zone}")
    return values.cast(TIMESTAMP).alias(series.name)


def _as_utc(values: pl.Series, zone: str) -> pl.Series:
    dtype: Any = values.dtype
    if dtype.time_zone is None:
        values = values.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
    return values.dt.convert_time_zone("UTC")
