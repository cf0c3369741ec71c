"""The model contract: feature values -> the booster's float matrix, and the top-reasons rule.

Training, the service and batch scoring all build the booster's input with
``Encoder`` and pick the reasons with ``top_reasons``, so the three agree by
construction rather than by tests holding copies together.

The encoding, column by column, in the spec's feature order:

* a categorical becomes its code in the spec's category list (fitted on the
  training rows); a value never seen in training, or a missing one, is NaN;
* a number becomes a float64; missing or non-numeric is NaN.

It is the rule ``prepare_features`` has always applied with pandas (text as
``astype("string")``, numbers as ``pd.to_numeric(errors="coerce")``), but
reached without a pandas frame: each caller hands over what it has, and every
path ends in the same per-value rule.

* ``Encoder.matrix`` takes a mapping column -> values (Python lists or numpy
  arrays from the online store; Arrow arrays). Values whose result the rule
  fixes without pandas — strings for categoricals, plain numbers and ``None``
  for numbers — take a shortcut (numpy's float cast, a dict lookup); anything
  else goes through pandas itself, so the shortcut can never disagree with it.
* ``Encoder.arrow`` feeds a table's columns in: native Arrow numbers are cast,
  everything else is dictionary-encoded and the rule applied to the distinct
  values only (a 100k-row chunk has a handful of segments).
* ``Encoder.frame`` feeds a pandas frame's columns in, as numpy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from crmdata.errors import CrmscoreError

if TYPE_CHECKING:
    from training.model import ModelSpec

NAN = float("nan")

#: What one column may be: Python values (list, tuple, object array), a numpy array or
#: an Arrow array (chunked or not).
Column = Sequence[Any] | np.ndarray | pa.Array | pa.ChunkedArray

#: Value types numpy casts to float64 exactly as ``pd.to_numeric(...).astype("float64")``
#: converts them (``None`` -> NaN); a column of nothing else skips pandas.
_PLAIN_NUMBERS = frozenset({
    type(None), bool, int, float,
    np.bool_, np.float16, np.float32, np.float64,
    np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
})
#: Categorical values looked up as they are: text, and the missing markers.
_TEXT_OR_MISSING = frozenset({str, type(None), type(pd.NA)})
_TEXT_OR_MISSING_OR_FLOAT = _TEXT_OR_MISSING | {float}  # a float only when it is NaN
_ARROW = (pa.Array, pa.ChunkedArray)
#: numpy dtype kinds that are numbers already: bool, signed, unsigned, float.
_NUMERIC_KINDS = frozenset("biuf")


class Encoder:
    """Feature values -> the booster's float matrix (rows × ``features``, float64)."""

    def __init__(self, features: Sequence[str], categories: Mapping[str, Sequence[str]],
                 owner: str = "the model") -> None:
        self.features = list(features)
        #: categorical feature -> category -> its code (as the float the matrix holds)
        self.codes: dict[str, dict[str, float]] = {
            col: {c: float(i) for i, c in enumerate(cats)} for col, cats in categories.items()
        }
        self.owner = owner
        # Resolved once: matrix() runs per request, and a per-column dict lookup there
        # is a noticeable share of a one-row call.
        self._plan = [(j, name, self.codes.get(name)) for j, name in enumerate(self.features)]

    @classmethod
    def of(cls, spec: ModelSpec) -> Encoder:
        return cls(spec.features, spec.categories, owner=f"{spec.model_name} ({spec.feature_service})")

    # -- the core ------------------------------------------------------------------------------

    def matrix(self, columns: Mapping[str, Column], n: int) -> np.ndarray:
        """The matrix of ``n`` rows; a feature absent from ``columns`` is missing (NaN) in
        every row — the online store may not serve it, and the trees handle missing."""
        pending: list[int] = []
        pending_values: list[Sequence[Any]] = []
        direct: list[tuple[int, np.ndarray]] = []
        get = columns.get
        for j, name, codes in self._plan:
            column = get(name)
            if column is None:
                continue
            # Exact type checks first: an isinstance against Arrow's classes for every
            # column would show in a one-row call.
            if type(column) is np.ndarray and codes is None and column.dtype.kind in _NUMERIC_KINDS:
                direct.append((j, column))  # already numbers: numpy's cast is pd.to_numeric's
            elif type(column) is not list and type(column) is not np.ndarray and isinstance(column, _ARROW):
                direct.append((j, self._arrow_column(column, codes)))
            else:
                # Python values, and the categoricals' codes, are cast in one block: one
                # numpy call per column would cost more than the model for a single row.
                pending.append(j)
                pending_values.append(column if codes is None else self._codes_of(column, codes))
        width = len(self.features)
        if len(pending) == width:  # all given as Python values (the service): nothing to place
            return np.ascontiguousarray(self._numbers_block(pending_values, n))
        x = np.full((n, width), NAN)
        if pending:
            x[:, pending] = self._numbers_block(pending_values, n)
        for j, values in direct:
            x[:, j] = values
        return x

    # -- the adapters ----------------------------------------------------------------------------

    def arrow(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """The matrix of an Arrow table or record batch (batch scoring)."""
        self._require(table.schema.names)
        return self.matrix({name: table.column(name) for name in self.features}, table.num_rows)

    def frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The matrix of a pandas frame (training, ``ScoringModel``)."""
        self._require(frame.columns)
        columns: dict[str, Column] = {}
        for name in self.features:
            series = frame[name]
            if name not in self.codes and _numeric_dtype(series.dtype):
                # Nullable Int64/Float64/boolean included: their <NA> becomes NaN here.
                columns[name] = series.to_numpy(dtype=np.float64, na_value=NAN)
            else:
                columns[name] = series.to_numpy(dtype=object)
        return self.matrix(columns, len(frame))

    def _require(self, names: Iterable[str]) -> None:
        # A whole feature absent from a table or frame is a wrong input, not missing data.
        present = set(names)
        missing = [f for f in self.features if f not in present]
        if missing:
            raise CrmscoreError(f"{self.owner}: input lacks {len(missing)} of its features: "
                                + ", ".join(missing[:10]))

    # -- the rule, per kind --------------------------------------------------------------------

    def _codes_of(self, column: Sequence[Any], codes: dict[str, float]) -> list[float]:
        """Categorical codes: a string is looked up as it is; anything else (numbers, bytes,
        numpy scalars) as the text pandas' ``astype("string")`` gives it."""
        # The plain lookup is right for strings and for missing values (no key is None,
        # <NA> or NaN); any other value needs its text first.
        values = column.tolist() if isinstance(column, np.ndarray) else column  # lists iterate faster
        kinds = set(map(type, values))
        if kinds <= _TEXT_OR_MISSING or (kinds <= _TEXT_OR_MISSING_OR_FLOAT
                                         and all(math.isnan(v) for v in values if type(v) is float)):
            return list(map(codes.get, values, repeat(NAN)))
        return self._codes_as_text(values, codes)

    @staticmethod
    def _codes_as_text(column: Sequence[Any], codes: dict[str, float]) -> list[float]:
        text = pd.Series(_python_list(column), dtype=object).astype("string").tolist()
        return [NAN if t is pd.NA else codes.get(t, NAN) for t in text]

    @staticmethod
    def _numbers_block(columns: Sequence[Sequence[Any]], n: int) -> np.ndarray:
        """Numbers of several columns of Python values, as an n × len(columns) block."""
        block = np.empty((len(columns), n), dtype=object)
        try:
            block[:] = columns  # one call: a third of the time of filling it row by row
        except ValueError:  # a value that is itself a sequence: numpy would descend into it
            for r, column in enumerate(columns):
                for i, value in enumerate(column):
                    block[r, i] = value
        # The type check is the price of exactness: numpy would also parse numeric
        # strings, but with float()'s rules, not pandas' (which reject "1_000", round
        # some long mantissas differently, ...).
        if set(map(type, block.ravel())) <= _PLAIN_NUMBERS:
            try:
                return block.astype(np.float64).T
            except OverflowError:  # an int beyond float64: pandas decides, below
                pass
        return np.column_stack([_to_numeric(_python_list(c)) for c in columns])

    def _arrow_column(self, column: pa.Array | pa.ChunkedArray, codes: dict[str, float] | None) -> np.ndarray:
        kind = column.type
        if codes is None and (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                              or pa.types.is_boolean(kind)):
            # Native numbers: Arrow's cast rounds as numpy's does (safe=False: an int64
            # beyond 2**53 rounds instead of failing); nulls become NaN.
            return np.asarray(pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False))
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        parts = [self._arrow_chunk(chunk, codes) for chunk in chunks]
        return np.concatenate(parts) if parts else np.empty(0)

    def _arrow_chunk(self, array: pa.Array, codes: dict[str, float] | None) -> np.ndarray:
        """The rule on the distinct values of one chunk, then spread over its rows."""
        if pa.types.is_null(array.type):
            return np.full(len(array), NAN)
        if not pa.types.is_dictionary(array.type):
            try:
                array = pc.dictionary_encode(array)
            except pa.ArrowNotImplementedError:  # a type Arrow cannot hash: value by value
                return self._python_values(array.to_pylist(), codes)
        distinct = array.dictionary.to_pylist()
        table = np.append(self._python_values(distinct, codes), NAN)  # last slot: null
        index = pc.fill_null(pc.cast(array.indices, pa.int64()), len(distinct))
        return table[index.to_numpy(zero_copy_only=False)]

    def _python_values(self, values: list[Any], codes: dict[str, float] | None) -> np.ndarray:
        if codes is not None:
            return np.asarray(self._codes_of(values, codes), dtype=np.float64)
        return self._numbers_block([values], len(values))[:, 0]


def _numeric_dtype(dtype: Any) -> bool:
    """A pandas dtype whose values are numbers already (numpy or nullable)."""
    return (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)) \
        and not isinstance(dtype, pd.CategoricalDtype) and dtype != object


def _python_list(column: Sequence[Any]) -> list[Any]:
    return column.tolist() if isinstance(column, np.ndarray) else list(column)


def _to_numeric(values: list[Any]) -> np.ndarray:
    """``pd.to_numeric(errors="coerce")`` as float64 — the rule itself, for values the
    numpy shortcut does not cover (numeric strings, bytes, Decimal, <NA>, ...)."""
    try:
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64").to_numpy()
    except (TypeError, ValueError, OverflowError):
        # pandas gives up on the whole column for one value no float64 holds (an int
        # beyond 1e308): value by value, so that one alone is missing.
        if len(values) == 1:
            return np.array([NAN])
        return np.concatenate([_to_numeric([v]) for v in values])


class TopReasons(NamedTuple):
    """Column indices of each row's strongest contributions, and which of them count.

    ``up[i]`` are row i's ``top`` largest contributions, largest first; ``down[i]``
    the ``top`` smallest, smallest first. Only positive ones push up and only negative
    ones push down (``up_ok`` / ``down_ok``); since the order is sorted, the slots that
    count are always a prefix of each row.
    """

    up: np.ndarray
    down: np.ndarray
    up_ok: np.ndarray
    down_ok: np.ndarray

    def rows(self) -> list[tuple[list[int], list[int]]]:
        """Per row: the indices pushing up and the indices pushing down."""
        return [([int(j) for j in u[ok_u]], [int(j) for j in d[ok_d]])
                for u, d, ok_u, ok_d in zip(self.up, self.down, self.up_ok, self.down_ok, strict=True)]


def top_reasons(contrib: np.ndarray, top: int) -> TopReasons:
    """The reasons rule: per row, the ``top`` features pushing the score up (largest
    positive contributions) and down (most negative), from one argsort of the matrix.

    ``contrib`` is rows × features (LightGBM's ``pred_contrib`` without its bias column).
    """
    k = min(top, contrib.shape[1])
    order = np.argsort(contrib, axis=1)
    up, down = order[:, ::-1][:, :k], order[:, :k]
    return TopReasons(up, down, np.take_along_axis(contrib, up, axis=1) > 0,
                      np.take_along_axis(contrib, down, axis=1) < 0)

