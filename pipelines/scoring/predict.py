"""The batch predictor: one Arrow batch of feature rows in, one batch of score rows out.

Both engines run exactly this code on every chunk (the local engine in threads,
the Spark engine inside ``mapInArrow``), which is why their scores agree to the
last bit. It is ``training.model.ScoringModel`` applied to Arrow columns:

* ``encode`` is the model contract's ``Encoder`` (the one training and the
  service use) fed straight from Arrow columns, without a pandas frame per chunk;
* probability, score and grade come from the model's own calibrator,
  ``score_1_99`` and grading;
* reasons are exact TreeSHAP contributions (LightGBM's ``pred_contrib`` values, from
  the booster's precomputed ``training.explain.TreeExplainer``, one per booster and
  process) with the indices picked by the same ``top_reasons`` rule as
  ``ScoringModel.reasons``, turned into JSON text column-wise (Arrow string kernels)
  instead of one Python dict per row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.scoring.types import FEATURE_TIMESTAMP, ReasonsMode
from training.calibration import Calibrator, Grading, score_1_99
from training.encoding import Encoder, top_reasons
from training.explain import explainer_for

if TYPE_CHECKING:
    from training.model import ScoringModel

TOP_REASONS = 3
#: ``reasons="top"`` explains only the best grades: churn high + medium, leads A + B
#: (the top 30% someone acts on). The default is all rows: explaining costs a few times a
#: predict (docs/batch-scoring.md, "How reasons are computed").
TOP_GRADES = 2


@dataclass
class BinaryPredictor:
    """A champion, flattened to what a worker needs; picklable (the booster travels as
    its text model and is parsed once per process), so Spark can ship it to executors."""

    task: str
    key: str
    features: list[str]
    categories: dict[str, list[str]]
    booster_text: str
    calibrator: Calibrator
    grading: Grading
    grade_column: str
    model_version: str
    as_of: datetime
    reasons: ReasonsMode = "all"
    top: int = TOP_REASONS
    _booster: Any = field(default=None, repr=False, compare=False)
    _encoder: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_model(cls, model: ScoringModel, task: str, grade_column: str, as_of: datetime,
                   reasons: ReasonsMode = "all") -> BinaryPredictor:
        spec = model.spec
        return cls(task=task, key=spec.entity_key, features=list(spec.features), categories=spec.categories,
                   booster_text="", calibrator=model.calibrator, grading=model.grading,
                   grade_column=grade_column, model_version=model.version, as_of=as_of, reasons=reasons,
                   _booster=model.booster)

    # -- pickling: ship the model text, never a live booster handle ---------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if not state["booster_text"] and state["_booster"] is not None:
            state["booster_text"] = state["_booster"].model_to_string()
        state["_booster"] = None
        return state

    @property
    def booster(self) -> lgb.Booster:
        if self._booster is None:
            self._booster = lgb.Booster(model_str=self.booster_text)
        return self._booster

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self.features, self.categories, owner=f"{self.task} model {self.model_version}")
        return self._encoder

    # -- the output ------------------------------------------------------------------------

    def output_schema(self) -> pa.Schema:
        ts = pa.timestamp("us", tz="UTC")
        return pa.schema([
            pa.field(self.key, pa.string(), nullable=False),
            pa.field("as_of", ts),
            pa.field("probability", pa.float64()),
            pa.field("score", pa.int64()),
            pa.field(self.grade_column, pa.string()),
            pa.field("reasons", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field(FEATURE_TIMESTAMP, ts),
        ])

    def spark_schema(self) -> str:
        """The output schema as a Spark DDL string (for ``mapInArrow``)."""
        return (f"{self.key} string, as_of timestamp, probability double, score bigint, "
                f"{self.grade_column} string, reasons string, model_version string, "
                f"{FEATURE_TIMESTAMP} timestamp")

    # -- the stages --------------------------------------------------------------------------

    def encode(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """The booster's input matrix (rows × model features, float64, row-major)."""
        return self.encoder.arrow(table)

    def probabilities(self, table: pa.Table | pa.RecordBatch) -> np.ndarray:
        """Calibrated probabilities of every row (no masking; for the drift reference)."""
        return self.calibrator.apply(np.asarray(self.booster.predict(self.encode(table), num_threads=1)))

    def score_table(self, table: pa.Table | pa.RecordBatch, timings: dict[str, float] | None = None) -> pa.Table:
        """Score one batch; ``timings`` (if given) accumulates seconds per stage."""
        if isinstance(table, pa.Table):
            # One contiguous batch: the element-wise kernels below mix it with numpy results.
            if table.num_rows == 0:
                return self.output_schema().empty_table()
            table = table.combine_chunks().to_batches()[0]
        clock = _Clock(timings)
        x = self.encode(table)
        clock.lap("prepare")
        raw = np.asarray(self.booster.predict(x, num_threads=1), dtype=np.float64)
        clock.lap("predict")
        p = self.calibrator.apply(raw)
        found = pc.is_valid(table.column(FEATURE_TIMESTAMP))
        # No feature row within the TTL: the model would only be scoring nulls, so the
        # entity is written (it is accounted for) with its scores left null.
        probability = pc.if_else(found, pa.array(p, pa.float64()), pa.scalar(None, pa.float64()))
        score = pc.if_else(found, pa.array(score_1_99(p).astype(np.int64)), pa.scalar(None, pa.int64()))
        grade = pc.if_else(found, pa.array(self.grading.assign(p), pa.string()), pa.scalar(None, pa.string()))
        clock.lap("calibrate_grade")
        n = table.num_rows
        need = found.to_numpy(zero_copy_only=False)
        if self.reasons == "top":
            need &= np.isin(grade.to_numpy(zero_copy_only=False), self.grading.labels[:TOP_GRADES])
        rows = np.flatnonzero(need) if self.reasons != "none" else np.empty(0, dtype=np.int64)
        if rows.size:
            contrib = explainer_for(self.booster).contributions(x[rows])[:, :-1]
            texts = self.reasons_json(contrib, table.take(pa.array(rows)))
            # Scatter back: row i takes text k where rows[k] == i, else null.
            position = np.full(n, -1, dtype=np.int64)
            position[rows] = np.arange(rows.size)
            reasons = texts.take(pa.array(position, mask=position < 0))
        else:
            reasons = pa.nulls(n, pa.string())
        clock.lap("reasons")
        ts = pa.timestamp("us", tz="UTC")
        return pa.table([
            pc.cast(table.column(self.key), pa.string()),
            pa.array(np.full(n, np.datetime64(self.as_of.astimezone(UTC).replace(tzinfo=None), "us")), ts),
            probability, score, grade, reasons,
            pa.array(np.full(n, self.model_version, dtype=object), pa.string()),
            pc.cast(table.column(FEATURE_TIMESTAMP), ts),
        ], schema=self.output_schema())

    # -- reasons as JSON, column-wise ---------------------------------------------------------

    def reasons_json(self, contrib: np.ndarray, table: pa.Table | pa.RecordBatch) -> pa.Array:
        """``{"up": [...], "down": [...]}`` per row (``reasons_json``)."""
        return reasons_json(contrib, table, self.features, self.top)

    def score_batches(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """``mapInArrow``'s function: score each incoming batch."""
        for batch in batches:
            if batch.num_rows:
                yield from self.score_table(batch).to_batches()


def reasons_json(contrib: np.ndarray, table: pa.Table | pa.RecordBatch, features: list[str], top: int) -> pa.Array:
    """``{"up": [...], "down": [...]}`` per row, each item ``{feature, value, impact}``.

    The indices are ``top_reasons``' (the rule of ``ScoringModel.reasons``). The
    positive ones form a prefix of the descending order (and the negative ones of
    the ascending), so a slot is present exactly when all before it are, and commas
    never need cleaning up.
    """
    picked = top_reasons(contrib, top)
    names = pa.array([json.dumps(f) for f in features], pa.string())
    parts: dict[str, pa.Array] = {}
    for direction, idx, ok in (("up", picked.up, picked.up_ok), ("down", picked.down, picked.down_ok)):
        impacts = np.take_along_axis(contrib, idx, axis=1)
        pieces = []
        for r in range(idx.shape[1]):
            item = pc.binary_join_element_wise(
                '{"feature":', names.take(pa.array(idx[:, r])),
                ',"value":', _values_json(table, idx[:, r], features),
                ',"impact":', pc.cast(pa.array(impacts[:, r]), pa.string()), "}", "",
            )
            if r:
                item = pc.binary_join_element_wise(",", item, "")
            pieces.append(pc.if_else(pa.array(ok[:, r]), item, ""))
        parts[direction] = pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else pieces[0]
    return pc.binary_join_element_wise('{"up":[', parts["up"], '],"down":[', parts["down"], "]}", "")


def _values_json(table: pa.Table | pa.RecordBatch, feature_index: np.ndarray, features: list[str]) -> pa.Array:
    """For row i, the JSON literal of feature ``feature_index[i]``'s value in row i."""
    order = np.argsort(feature_index, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(feature_index, minlength=len(features)))])
    pieces = []
    for j, name in enumerate(features):
        rows = order[bounds[j]:bounds[j + 1]]
        if len(rows):
            pieces.append(_json_literals(table.column(name).take(pa.array(rows))))
    joined = pa.concat_arrays(pieces)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return joined.take(pa.array(inverse))


def _json_literals(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value as a JSON literal: strings quoted and escaped, numbers as numbers,
    null and non-finite numbers as ``null``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        encoded = pc.dictionary_encode(pc.cast(values, pa.string()) if not pa.types.is_dictionary(kind) else values)
        literals = pa.array([json.dumps(v) for v in encoded.dictionary.to_pylist()], pa.string())
        return pc.fill_null(literals.take(encoded.indices), "null")
    if pa.types.is_boolean(kind):
        return pc.fill_null(pc.if_else(values, "true", "false"), "null")
    if pa.types.is_integer(kind):
        return pc.fill_null(pc.cast(values, pa.string()), "null")
    numbers = pc.cast(values, pa.float64())
    text = pc.if_else(pc.is_finite(numbers), pc.cast(numbers, pa.string()), "null")
    return pc.fill_null(text, "null")


class _Clock:
    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now
