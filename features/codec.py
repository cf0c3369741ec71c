"""Feast's online row format, both directions, with the per-value Python taken out.

Feast's online stores hold, per entity, the serialized entity key
(``serialize_entity_key`` of an ``EntityKey`` proto) and one serialized
``ValueProto`` per feature. ``features.materialize`` writes that format in bulk
and ``features.online`` reads it back; both go through this module, so the bytes
written and the values read follow one definition:

* entity keys: ``entity_keys`` (string ids, memoized: the read path asks for the
  same customers again and again) and ``encode_keys`` (a whole key column of any
  Feast type, for a write);
* values, written: ``encode_column`` converts each *distinct* value of a column
  once with Feast's own converters and serializes it with ``SerializeToString``
  (plus the ``value_text`` SQLite stores beside it), ``encode_rows`` a table slice;
* values, read: ``decode_values`` parses each distinct stored blob once (bounded
  memo) into the Python value Feast's ``get_online_features`` would return;
  ``python_value`` converts one parsed ``ValueProto``.

Tests hold both directions to Feast's: materialized SQLite rows and Redis hashes
byte for byte, and online reads value for value (tests/test_features_store.py,
tests/test_features_redis.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

#: Bound of each memo cache (cleared when full): serialized entity keys, and the Python
#: value of each distinct stored ValueProto. Both are pure functions of their key.
CACHE_LIMIT = 200_000
#: Feast value types ``encode_column`` converts once per distinct value (scalars: a
#: value's bytes do not depend on the other values of its column).
SCALAR_VALUE_TYPES = frozenset({"INT32", "INT64", "FLOAT", "DOUBLE", "STRING", "BOOL"})

_ENTITY_KEYS: dict[tuple[Any, ...], bytes] = {}
#: Missing (Redis answers None) and empty ValueProto bytes (a null) are None.
_NULLS: dict[bytes | None, Any] = {None: None, b"": None}
_VALUES: dict[bytes | None, Any] = dict(_NULLS)
#: Scalar ValueProto fields read directly; anything else goes through Feast's converter.
_SCALARS = frozenset({"int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val"})


# --- entity keys ----------------------------------------------------------------------


def entity_keys(join_keys: tuple[str, ...], ids: Sequence[tuple[str, ...]], version: int) -> list[bytes]:
    """Feast's ``serialize_entity_key`` of each id tuple (string join keys), memoized."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    out = []
    for values in ids:
        memo = (join_keys, values, version)
        key = _ENTITY_KEYS.get(memo)
        if key is None:
            proto = EntityKeyProto(
                join_keys=list(join_keys), entity_values=[ValueProto(string_val=v) for v in values]
            )
            key = serialize_entity_key(proto, entity_key_serialization_version=version)
            if len(_ENTITY_KEYS) >= CACHE_LIMIT:
                _ENTITY_KEYS.clear()
            _ENTITY_KEYS[memo] = key
        out.append(key)
    return out


def encode_keys(join_key: str, values: np.ndarray, value_type: Any, version: int) -> list[bytes]:
    """Feast's serialized entity key of each value of a key column of ``value_type``
    (converted as Feast's materialize converts it), unmemoized: a write sees each once."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.type_map import python_values_to_proto_values

    if value_type.name == "STRING" and version >= 3 and all(type(v) is str for v in values):
        return _string_keys(join_key, values.tolist())
    return [
        serialize_entity_key(EntityKeyProto(join_keys=[join_key], entity_values=[p]), version)
        for p in python_values_to_proto_values(values, value_type)
    ]


def _string_keys(join_key: str, ids: list[str]) -> list[bytes]:
    """``serialize_entity_key`` (version 3) of one string join key, without a proto per
    id: the join-key prefix, then the value's type, byte length and UTF-8 bytes (Feast's
    ``_serialize_val``). A million keys take ~0.5 s instead of ~20 s."""
    import struct

    from feast.infra.key_encoding_utils import serialize_entity_key_prefix
    from feast.protos.feast.types.Value_pb2 import ValueType

    head = serialize_entity_key_prefix([join_key], 3) + struct.pack("<I", ValueType.STRING)
    size = struct.Struct("<I").pack
    return [head + size(len(b)) + b for b in map(str.encode, ids)]


# --- values, written --------------------------------------------------------------------


def encode_column(values: np.ndarray, value_type: Any, text: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Feast's serialized ValueProto (and, with ``text``, SQLite's ``value_text``) per
    value of a column, as object arrays: a float64 DOUBLE column is encoded directly
    (``_encode_doubles``), any other converts each distinct value once with Feast's
    own helpers."""
    import pandas as pd
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.type_map import python_values_to_proto_values

    if values.dtype == np.float64 and value_type.name == "DOUBLE":
        return _encode_doubles(values, text)
    if values.dtype.kind == "f":  # by bit pattern: keeps -0.0 and NaN payloads apart
        codes, bits = pd.factorize(values.view(np.int64))
        uniques: list[Any] = list(bits.view(values.dtype))
        na: list[Any] = []
    else:
        codes, found = pd.factorize(values, use_na_sentinel=True)
        uniques = list(found)
        missing = codes < 0
        na = []
        if missing.any():
            # Missing values of each Python type (None, NaN, ...) convert alike.
            kinds: dict[type, int] = {}
            for v in values[missing]:
                kinds.setdefault(type(v), len(uniques) + len(na))
                if len(na) < len(kinds):
                    na.append(v)
            codes = codes.copy()
            codes[missing] = [kinds[type(v)] for v in values[missing]]
    if values.dtype.kind == "f" and value_type.name in ("DOUBLE", "FLOAT"):
        # Feast's generic scalar branch (``_convert_scalar_values_to_proto``) for a
        # float array: NaN -> an empty ValueProto, else ``Value(<field>=func(v))``
        # from Feast's own table; the null test is vectorized, the values are
        # typically all distinct (measurements), so this skips its per-value isnull.
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from feast.type_map import PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE

        field, func, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]
        floats = np.asarray(uniques, dtype=values.dtype)
        null = np.isnan(floats)
        # One message, reassigned: the same bytes as a new Value per value, 3x faster.
        proto, empty = ValueProto(), ValueProto().SerializeToString()
        serialize = proto.SerializeToString
        blobs, strings = [], []
        for v, nan in zip(floats.tolist(), null.tolist(), strict=True):
            if nan:
                blobs.append(empty)
                strings.append(None)
            else:
                setattr(proto, field, func(v))
                blobs.append(serialize())
                # extract_text_and_num: str() of the value as the proto holds it.
                strings.append(str(getattr(proto, field)) if text else None)
    else:
        protos = python_values_to_proto_values(uniques + na, value_type) if uniques or na else []
        blobs = [p.SerializeToString() for p in protos]
        strings = [extract_text_and_num(p, False)[0] for p in protos] if text else []
    lookup = np.empty(len(blobs), dtype=object)
    lookup[:] = blobs
    serialized = lookup[codes]
    if not text:
        return serialized, None
    texts = np.empty(len(strings), dtype=object)
    texts[:] = strings
    return serialized, texts[codes]


#: A serialized ``ValueProto(double_val=x)``: the tag of field 5 with wire type 1 (64-bit),
#: then the IEEE 754 bits of x, little-endian. Proto3 writes a oneof member even when it is
#: 0.0, so every non-null double is these 9 bytes (tests compare them with Feast's).
_DOUBLE_TAG = 0x29


def _encode_doubles(values: np.ndarray, text: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``encode_column`` of a float64 DOUBLE column without a proto per value: measured
    features are mostly distinct, so converting each distinct value once saves nothing.
    NaN is Feast's null (an empty ValueProto, no value_text); ``value_text`` is
    ``str()`` of the double, which for a Python float is its ``repr``."""
    n = len(values)
    packed = np.empty((n, 9), dtype=np.uint8)
    packed[:, 0] = _DOUBLE_TAG
    packed[:, 1:] = values.astype("<f8", copy=False).view(np.uint8).reshape(n, 8)
    blobs = np.empty(n, dtype=object)
    # A 9-byte void item converts to its bytes, trailing zeros included.
    blobs[:] = packed.view("V9").ravel().tolist()
    texts = None
    if text:
        texts = np.empty(n, dtype=object)
        texts[:] = list(map(float.__repr__, values.tolist()))
    null = np.isnan(values)
    if null.any():
        blobs[null] = b""
        if texts is not None:
            texts[null] = None
    return blobs, texts


@dataclass
class EncodedRows:
    """A slice of a feature view's rows in Feast's online format, ready for a store."""

    entity_keys: list[bytes]  # Feast's serialize_entity_key
    features: list[str]
    values: list[np.ndarray]  # per feature, per entity (object arrays of bytes)
    texts: list[np.ndarray] | None  # SQLite value_text, per feature, per entity
    timestamps: list[datetime]  # per entity, as Feast's converter returns them


def encode_rows(view: Any, table: Any, *, version: int, text: bool) -> EncodedRows:
    """Encode an Arrow table of a view's rows (join key, event time, the view's
    features) as Feast's materialize would hand them to ``online_write_batch``;
    ``text``: also SQLite's ``value_text`` column."""
    import pandas as pd
    from feast.utils import _coerce_datetime

    key = view.entity_columns[0]
    keys = encode_keys(
        key.name, table.column(key.name).to_numpy(zero_copy_only=False), key.dtype.to_value_type(), version
    )
    values, texts = [], []
    for feature in view.features:
        column = table.column(feature.name).to_numpy(zero_copy_only=False)
        ser, txt = encode_column(column, feature.dtype.to_value_type(), text)
        values.append(ser)
        texts.append(txt)
    # Event times exactly as Feast's _convert_arrow_fv_to_proto builds them.
    raw = table.column(view.batch_source.timestamp_field).to_numpy(zero_copy_only=False)
    codes, uniques = pd.factorize(raw)
    converted = np.empty(len(uniques), dtype=object)
    converted[:] = [_coerce_datetime(v) for v in pd.to_datetime(uniques)]
    return EncodedRows(
        entity_keys=keys,
        features=[f.name for f in view.features],
        values=values,
        texts=texts if text else None,
        timestamps=converted[codes].tolist(),
    )


# --- values, read -----------------------------------------------------------------------


def python_value(proto: Any, convert: Callable[[Any], Any]) -> Any:
    """The Python value of a ValueProto as ``get_online_features`` returns it: None for
    no value or a null, scalars read directly, anything else through ``convert``
    (Feast's ``feast_value_type_to_python_type``)."""
    if proto is None:
        return None
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(proto, kind) if kind in _SCALARS else convert(proto)


def _decode_blob(blob: bytes) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.type_map import feast_value_type_to_python_type

    proto = ValueProto()
    proto.ParseFromString(blob)
    return python_value(proto, feast_value_type_to_python_type)


def decode_values(blobs: Sequence[bytes | None]) -> np.ndarray:
    """The Python values of stored ValueProto bytes (None/empty -> None) as a 1-D object
    array. Each distinct blob is parsed once and memoized; a list or dict value is
    parsed per occurrence (so two rows never share one mutable object) and stored as
    one element (numpy would otherwise unpack it into a dimension)."""
    nested = False
    distinct = set(blobs)
    new = distinct.difference(_VALUES)
    if new:
        decoded = {b: _decode_blob(b) for b in new}  # type: ignore[arg-type]
        scalars = {b: v for b, v in decoded.items() if not isinstance(v, list | dict)}
        if len(_VALUES) + len(scalars) > CACHE_LIMIT:
            # Start over, but keep what this call still looks up.
            kept = {b: _VALUES[b] for b in distinct - new}
            _VALUES.clear()
            _VALUES.update(_NULLS)
            _VALUES.update(kept)
        _VALUES.update(scalars)
        nested = len(scalars) < len(decoded)
    out = np.empty(len(blobs), dtype=object)
    if nested:
        for i, b in enumerate(blobs):
            out[i] = _VALUES[b] if b in _VALUES else _decode_blob(b)  # type: ignore[arg-type]
    else:
        out[:] = list(map(_VALUES.__getitem__, blobs))
    return out
