"""Streaming parquet output for the big tables (orders, interactions, lead activities).

A million-customer world has tens of millions of interactions. Building one
polars frame of them and writing it at once doubles the memory and spends most
of its time dictionary-encoding unique values. Here a table is written in row
groups, each built straight from the simulator's arrays as Arrow arrays:

- ids are fixed-width strings ("C0000001"), so a column of them is a gather of
  fixed-size byte rows (one memcpy each) and an arithmetic offsets buffer;
- category columns (types, products) go in as dictionary arrays (a small
  vocabulary and int32 codes), which the parquet writer encodes directly;
- dictionary encoding is used only for those columns, and timestamps are
  delta-encoded (they grow within a week).

The resulting files read back with exactly the contract's polars dtypes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crmdata.contract import Table

log = logging.getLogger(__name__)

ARROW_TYPES: dict[str, pa.DataType] = {
    "id": pa.large_string(),
    "str": pa.large_string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
#: Rows per row group (and per build call, which bounds the memory of a chunk).
ROW_GROUP_ROWS = 1 << 21


def arrow_schema(table: Table) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.kind], nullable=c.nullable) for c in table.columns])


class FixedIds:
    """Ids "<prefix><zero-padded number>" for rows 0..n-1, gathered without per-row work."""

    def __init__(self, prefix: str, n: int) -> None:
        self.width = len(prefix) + max(7, len(str(n)))
        self.prefix = prefix
        self.n = n
        self._bytes: np.ndarray | None = None

    def rows(self, numbers: np.ndarray) -> np.ndarray:
        """The id bytes of 1-based numbers, as an (n, width) uint8 matrix."""
        digits = self.width - len(self.prefix)
        out = np.empty((numbers.size, self.width), dtype=np.uint8)
        out[:, : len(self.prefix)] = np.frombuffer(self.prefix.encode(), dtype=np.uint8)
        x = numbers.astype(np.int64)
        for p in range(digits - 1, -1, -1):
            out[:, len(self.prefix) + p] = 48 + x % 10  # ASCII digits
            x //= 10
        return out

    def range(self, lo: int, hi: int) -> pa.Array:
        """Ids of rows lo..hi-1 (numbers lo+1..hi)."""
        return self._strings(self.rows(np.arange(lo + 1, hi + 1)))

    def take(self, index: np.ndarray) -> pa.Array:
        """Ids of the given rows (0-based)."""
        if self._bytes is None:
            # One fixed-size opaque item per id: numpy gathers them as whole rows.
            self._bytes = self.rows(np.arange(1, self.n + 1)).view(np.dtype((np.void, self.width))).ravel()
        return self._strings(self._bytes[index].view(np.uint8).reshape(-1, self.width))

    def _strings(self, rows: np.ndarray) -> pa.Array:
        n = rows.shape[0]
        offsets = np.arange(0, (n + 1) * self.width, self.width, dtype=np.int64)
        data = np.ascontiguousarray(rows).ravel()
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def categories(values: Sequence[str], codes: np.ndarray) -> pa.Array:
    """A dictionary-encoded string column: the small vocabulary plus one int32 code per row.

    Written as is (no per-row strings are built, and the parquet dictionary needs
    no hashing); the file stores plain parquet strings, read back as ``pl.String``.
    """
    dictionary = pa.array(list(values), type=pa.large_string())
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32, copy=False)), dictionary)


def timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64, copy=False), type=pa.timestamp("us", tz="UTC"))


def floats(values: np.ndarray) -> pa.Array:
    """float64, null where the value is NaN."""
    values = values.astype(np.float64, copy=False)
    return pa.array(values, mask=np.isnan(values), type=pa.float64())


def write_chunked(
    path: Path,
    table: Table,
    n_rows: int,
    build: Callable[[int, int], dict[str, pa.Array]],
    dictionary: Sequence[str] = (),
) -> int:
    """Write ``n_rows`` rows of ``table`` to ``path``, ``build(lo, hi)`` giving each row group.

    ``dictionary`` names the low-cardinality string columns that ``build`` returns
    as ``categories``. The Arrow schema is not stored in the file (it would turn
    those columns into categoricals for readers): parquet's own logical types
    (UTF8 strings, UTC microsecond timestamps) give exactly the contract dtypes.
    """
    schema = arrow_schema(table)
    for name in dictionary:
        i = schema.get_field_index(name)
        schema = schema.set(i, schema.field(i).with_type(pa.dictionary(pa.int32(), pa.large_string())))
    encodings = {c.name: "DELTA_BINARY_PACKED" for c in table.columns if c.kind == "timestamp"}
    with pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        use_dictionary=list(dictionary),
        column_encoding=encodings,
        write_statistics=True,
        store_schema=False,
    ) as writer:
        if n_rows == 0:
            writer.write_table(schema.empty_table())
        for lo in range(0, n_rows, ROW_GROUP_ROWS):
            hi = min(lo + ROW_GROUP_ROWS, n_rows)
            writer.write_table(pa.table(build(lo, hi), schema=schema), row_group_size=ROW_GROUP_ROWS)
    log.debug("wrote %s: %d rows", path.name, n_rows)
    return n_rows
