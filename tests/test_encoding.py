"""The model contract: the one encoder (feature values -> booster matrix) and the one
reasons rule, on hand-built inputs with exact expected values, and the three callers
(training's ScoringModel, the service's BinaryScorer, batch scoring's BinaryPredictor)
producing identical matrices and reasons on the same rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from crmdata.errors import CrmscoreError
from training.calibration import Calibrator, Grading
from training.encoding import Encoder, top_reasons
from training.model import ModelSpec, ScoringModel, prepare_features

NAN = np.nan
SPEC = ModelSpec(task="churn", model_name="m", feature_service="s_v1", entity_key="customer_id",
                 features=["seg", "n", "s_num", "flag", "x"],
                 categories={"seg": ["a", "b"], "flag": ["1", "True", "2.5"]}, label_window_days=90)


def encoder() -> Encoder:
    return Encoder.of(SPEC)


def assert_same(got: np.ndarray, want: list[list[float]]) -> None:
    # Bit for bit, NaN where NaN (and -0.0 is 0.0 here, as the trees see it).
    np.testing.assert_array_equal(got, np.array(want, dtype=np.float64))


# --- Python values (the online store, new leads) ---------------------------------------------


def test_categoricals_unseen_and_missing_are_nan() -> None:
    x = encoder().matrix({"seg": ["b", "a", "zzz", None, NAN, pd.NA], "flag": ["2.5"] * 6}, 6)
    assert_same(x[:, 0], [1, 0, NAN, NAN, NAN, NAN])
    assert_same(x[:, 3], [2] * 6)


def test_non_text_categoricals_are_looked_up_as_their_text() -> None:
    # As pandas' astype("string") writes them: 1 -> "1", True -> "True", b"1" -> "1".
    x = encoder().matrix({"flag": [1, True, 2.5, np.int64(1), b"1", False, NAN]}, 7)
    assert_same(x[:, 3], [0, 1, 2, 0, 0, NAN, NAN])


def test_numbers_bools_and_numeric_strings() -> None:
    x = encoder().matrix({
        "n": [1, 2.5, None, True, False, np.int64(7)],
        "s_num": ["3", " 4 ", "1e3", "abc", "1_000", Decimal("1.5")],
    }, 6)
    assert_same(x[:, 1], [1, 2.5, NAN, 1, 0, 7])
    # pd.to_numeric's rules, not float()'s: "1_000" is not a number to pandas.
    assert_same(x[:, 2], [3, 4, 1000, NAN, NAN, 1.5])


def test_an_int_beyond_float64_is_missing_alone() -> None:
    assert_same(encoder().matrix({"n": [10**400, 2]}, 2)[:, 1], [NAN, 2])


def test_a_feature_not_given_is_missing_and_order_is_the_specs() -> None:
    x = encoder().matrix({"x": [0.5], "n": [3]}, 1)
    assert_same(x, [[NAN, 3, NAN, NAN, 0.5]])
    assert encoder().matrix({}, 0).shape == (0, 5)


def test_numpy_arrays_as_the_online_reader_gives_them() -> None:
    x = encoder().matrix({
        "seg": np.array(["a", None, "b"], dtype=object),
        "n": np.array([1, 2, 3], dtype=np.int64),
        "s_num": np.array([1.5, None, "2"], dtype=object),
        "flag": np.array(["1", "x", "True"]),  # numpy strings: looked up by their text too
        "x": np.array([True, False, True]),
    }, 3)
    assert_same(x, [[0, 1, 1.5, 0, 1], [NAN, 2, NAN, NAN, 0], [1, 3, 2, 1, 1]])


# --- Arrow (batch scoring) ---------------------------------------------------------------------


def arrow_columns() -> dict[str, pa.Array]:
    return {
        "x": pa.array([0.5, None, NAN, -0.0]),
        "seg": pa.array(["b", None, "zzz", "a"]).dictionary_encode(),
        "n": pa.array([1, None, 3, 2**53 + 1], pa.int64()),  # rounds as numpy's cast does
        "s_num": pa.array(["3", None, "abc", "1e3"]),
        "flag": pa.array([True, False, None, True]),  # a bool categorical: "True"/"False"
    }


ARROW_EXPECTED = [[1, 1, 3, 1, 0.5], [NAN, NAN, NAN, NAN, NAN], [NAN, 3, NAN, NAN, NAN],
                  [0, 2.0**53, 1000, 1, 0.0]]


def test_arrow_with_nulls_dictionaries_and_numeric_strings() -> None:
    table = pa.table(arrow_columns())
    assert_same(encoder().arrow(table), ARROW_EXPECTED)
    assert_same(encoder().arrow(table.to_batches()[0]), ARROW_EXPECTED)


def test_arrow_chunks_with_different_dictionaries() -> None:
    columns = arrow_columns()
    seg = pa.chunked_array([pa.array(["b", None]).dictionary_encode(),
                            pa.array(["zzz", "a"]).dictionary_encode()])  # ["b"], then ["zzz", "a"]
    table = pa.table({**columns, "seg": seg, "s_num": pa.array(["3", None, "abc", "1e3"], pa.large_string())})
    assert table.column("seg").num_chunks == 2
    assert_same(encoder().arrow(table), ARROW_EXPECTED)
    both = pa.concat_tables([pa.table(columns).slice(0, 1), pa.table(columns).slice(1)])
    assert_same(encoder().arrow(both), ARROW_EXPECTED)


def test_an_all_null_arrow_column_is_missing() -> None:
    table = pa.table({**arrow_columns(), "s_num": pa.nulls(4), "seg": pa.nulls(4, pa.string())})
    x = encoder().arrow(table)
    assert np.isnan(x[:, 0]).all() and np.isnan(x[:, 2]).all()


def test_a_table_lacking_features_is_an_error() -> None:
    table = pa.table({"seg": ["a"], "n": [1]})
    with pytest.raises(CrmscoreError, match=r"m \(s_v1\): input lacks 3 of its features: s_num, flag, x"):
        encoder().arrow(table)


# --- pandas (training) ----------------------------------------------------------------------


def test_pandas_frames_of_every_dtype() -> None:
    frame = pd.DataFrame({
        "x": [0.5, NAN, -1.0],
        "flag": [True, False, True],
        "seg": pd.Series(["b", None, "a"], dtype="category"),
        "n": pd.array([1, None, 3], dtype="Int64"),
        "s_num": pd.Series(["3", pd.NA, "x"], dtype="string"),
        "other": ["ignored"] * 3,
    }).set_axis([10, 11, 12])
    x = prepare_features(frame, SPEC)
    assert list(x.columns) == SPEC.features and list(x.index) == [10, 11, 12]
    assert (x.dtypes == np.float64).all()
    assert_same(x.to_numpy(), [[1, 1, 3, 1, 0.5], [NAN, NAN, NAN, NAN, NAN], [0, 3, NAN, 1, -1]])


def test_a_frame_lacking_features_is_an_error() -> None:
    with pytest.raises(CrmscoreError, match="input lacks 4 of its features: seg, s_num, flag, x"):
        prepare_features(pd.DataFrame({"n": [1]}), SPEC)


def test_lists_numpy_arrow_and_pandas_agree_on_mixed_values() -> None:
    values: dict[str, list[Any]] = {
        "seg": ["a", None, "b", "q", None], "n": [1, None, 2, 3, 4],
        "s_num": ["1", "2.5", None, "z", "7"], "flag": ["1", "True", None, "2.5", "x"],
        "x": [0.25, None, -3.0, 1e300, 0.0],
    }
    want = encoder().matrix(values, 5)
    as_arrays = {k: np.array([*v, None], dtype=object)[:-1] for k, v in values.items()}
    np.testing.assert_array_equal(encoder().matrix(as_arrays, 5), want)
    np.testing.assert_array_equal(encoder().arrow(pa.table(values)), want)
    np.testing.assert_array_equal(encoder().frame(pd.DataFrame(values)), want)


# --- the reasons rule ---------------------------------------------------------------------


def test_top_reasons_takes_positive_up_and_negative_down_in_order() -> None:
    contrib = np.array([[0.5, -0.2, 0.0, 0.1, -0.7],
                        [0.0, 0.0, 0.0, 0.0, 0.0],
                        [-1.0, -2.0, 3.0, 0.0, 0.0]])
    picked = top_reasons(contrib, 3)
    assert picked.up.shape == picked.down.shape == (3, 3)
    assert picked.up[0].tolist() == [0, 3, 2] and picked.up_ok[0].tolist() == [True, True, False]
    assert picked.down[0].tolist() == [4, 1, 2] and picked.down_ok[0].tolist() == [True, True, False]
    assert not picked.up_ok[1].any() and not picked.down_ok[1].any()
    assert picked.rows() == [([0, 3], [4, 1]), ([], []), ([2], [1, 0])]
    assert top_reasons(contrib, 10).up.shape == (3, 5)  # more asked for than there are features


# --- the three callers -------------------------------------------------------------------------

FEATURES = ["seg", "n", "x", "flag"]


@pytest.fixture(scope="module")
def model() -> ScoringModel:
    """A small real booster over a categorical and numbers, with missing values."""
    rng = np.random.default_rng(5)
    rows = 600
    seg = rng.choice(["smb", "mid", "ent"], rows)
    n = rng.integers(0, 20, rows).astype(float)
    n[rng.random(rows) < 0.1] = NAN
    x = rng.normal(size=rows)
    flag = rng.choice(["y", "n"], rows)
    logit = -1 + 0.15 * np.nan_to_num(n, nan=5) - 1.2 * (seg == "ent") + x + 0.8 * (flag == "y")
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"seg": seg, "n": n, "x": x, "flag": flag})
    spec = ModelSpec(task="churn", model_name="crm-churn", feature_service="churn_v1", entity_key="customer_id",
                     features=FEATURES, categories={"seg": ["ent", "mid", "smb"], "flag": ["n", "y"]},
                     label_window_days=90)
    params = {"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(prepare_features(frame, spec), label,
                                            categorical_feature=["seg", "flag"]), num_boost_round=25)
    raw = booster.predict(prepare_features(frame, spec))
    calibrator = Calibrator.fit(raw, label)
    grading = Grading.fit(calibrator.apply(raw), ["high", "medium", "low"], [0.2, 0.3, 0.5])
    return ScoringModel(name="crm-churn", version="1", alias=None, run_id=None, booster=booster,
                        calibrator=calibrator, grading=grading, spec=spec)


def test_the_three_callers_give_identical_matrices_scores_and_reasons(model: ScoringModel) -> None:
    from pipelines.scoring.predict import FEATURE_TIMESTAMP, BinaryPredictor
    from serving.scoring import BinaryScorer

    # As the online store serves them: object arrays, None where a value is missing,
    # an unseen segment among them.
    rng = np.random.default_rng(9)
    n = 40
    columns: dict[str, list[Any]] = {
        "seg": [str(s) for s in rng.choice(["smb", "mid", "ent", "new"], n)],
        "n": [int(v) for v in rng.integers(0, 20, n)],
        "x": [float(v) for v in rng.normal(size=n)],
        "flag": [str(s) for s in rng.choice(["y", "n"], n)],
    }
    for feature, every in (("seg", 7), ("n", 5), ("x", 9), ("flag", 11)):
        for i in range(0, n, every):
            columns[feature][i] = None
    values = {k: np.array([*v, None], dtype=object)[:-1] for k, v in columns.items()}
    frame = pd.DataFrame(values)
    ids = [f"C{i}" for i in range(n)]
    table = pa.table({"customer_id": ids, **columns,
                      FEATURE_TIMESTAMP: pa.array([datetime(2024, 5, 1, tzinfo=UTC)] * n,
                                                  pa.timestamp("us", tz="UTC"))})
    scorer = BinaryScorer(model)
    predictor = BinaryPredictor.from_model(model, "churn", "band", datetime(2024, 5, 1, tzinfo=UTC), "all")

    matrix = model.encoder.frame(frame)
    np.testing.assert_array_equal(prepare_features(frame, model.spec).to_numpy(), matrix)
    np.testing.assert_array_equal(scorer.encoder.matrix(values, n), matrix)
    np.testing.assert_array_equal(predictor.encode(table), matrix)
    assert np.isnan(matrix).any()

    expected = model.score(frame)
    served = scorer.score(values, n, explain=True)
    batch = predictor.score_table(table).to_pandas()
    np.testing.assert_array_equal(served.probability, expected["probability"])
    np.testing.assert_array_equal(batch["probability"], expected["probability"])
    assert list(served.grade) == list(batch["band"]) == expected["grade"].tolist()

    assert served.reasons is not None
    for theirs, mine, text in zip(model.reasons(frame), served.reasons, batch["reasons"], strict=True):
        parsed = json.loads(text)
        for side in ("up", "down"):
            want = [(r.feature, r.value, r.impact) for r in theirs[side]]
            assert [(r.feature, r.value, r.impact) for r in mine[side]] == want
            assert [(r["feature"], r["value"], r["impact"]) for r in parsed[side]] == want
    assert any(r["up"] and r["down"] for r in model.reasons(frame))
