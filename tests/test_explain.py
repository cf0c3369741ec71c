"""training/explain.py: TreeExplainer gives LightGBM's pred_contrib, row for row, within 1e-6.

Boosters are trained here on small hand-made data that reaches every kind of split the
explainer replicates (numerical with missing types None / Zero / NaN and both default
sides, categorical bitsets, NaN / negative / fractional / unseen categories, values within
1e-35 of zero), deep trees (leaves past the table depth, computed per row), one-leaf trees
and early stopping; and the churn champion of the tiny trained world.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from training.explain import TreeExplainer, explainer_for

TOLERANCE = 1e-6


def _data(seed: int, rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Numbers with NaNs and exact zeros; column 1 a category code 0..7."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    x[:, 1] = rng.integers(0, 8, rows)
    x[:, 2] = np.where(rng.random(rows) < 0.3, 0.0, x[:, 2])
    x[rng.random((rows, features)) < 0.1] = np.nan
    signal = np.nan_to_num(x[:, 0]) + np.isin(x[:, 1], (2, 5)) - 0.7 * np.nan_to_num(x[:, 2]) + np.isnan(x[:, 3])
    y = (signal + rng.normal(size=rows) * 0.7 > 0.6).astype(float)
    return x, y


def _probe(seed: int, rows: int, features: int) -> np.ndarray:
    """Rows to explain: like the training rows, plus what training never saw."""
    x, _ = _data(seed + 1000, rows, features)
    rng = np.random.default_rng(seed)
    x[: rows // 4, 1] = rng.choice([-1.0, -0.5, 0.5, 2.7, 9.0, 40.0, 1e12, np.nan], rows // 4)
    x[rows // 4: rows // 2, 2] = rng.choice([0.0, -0.0, 1e-36, -1e-36, 1e-30, np.nan], rows // 4)
    return x


def _train(params: dict, x: np.ndarray, y: np.ndarray, rounds: int) -> lgb.Booster:
    data = lgb.Dataset(x, y, categorical_feature=[1], params={"verbose": -1})
    return lgb.train({"verbose": -1, "num_threads": 1, "min_data_per_group": 5, "cat_smooth": 1.0, **params},
                     data, rounds)


def _assert_equal(booster: lgb.Booster, x: np.ndarray, **options: int) -> TreeExplainer:
    explainer = TreeExplainer.of(booster, **options)
    mine = explainer.contributions(x)
    theirs = booster.predict(x, pred_contrib=True, num_threads=1)
    assert mine.shape == theirs.shape
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=TOLERANCE)
    return explainer


@pytest.mark.parametrize(("seed", "rows", "features"), [(0, 600, 5), (1, 1500, 8), (2, 400, 12)])
@pytest.mark.parametrize("missing", [{}, {"zero_as_missing": True}, {"use_missing": False}])
def test_binary_with_nans_zeros_and_a_categorical(seed: int, rows: int, features: int, missing: dict) -> None:
    x, y = _data(seed, rows, features)
    booster = _train({"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, **missing}, x, y, 30)
    dumped = booster.dump_model()["tree_info"]
    kinds = {n["decision_type"] for t in dumped for n in _nodes(t["tree_structure"])}
    assert kinds == {"<=", "=="}  # both kinds of split are exercised
    _assert_equal(booster, _probe(seed, 800, features))


def test_deep_trees_past_the_table_depth() -> None:
    """Leaves with more distinct path features than the tables hold are computed per row."""
    x, y = _data(3, 4000, 20)
    booster = _train({"objective": "binary", "num_leaves": 127, "min_data_in_leaf": 2, "max_bin": 63}, x, y, 8)
    depths = [len({n["split_feature"] for n in path}) for t in booster.dump_model()["tree_info"]
              for path in _paths(t["tree_structure"])]
    assert max(depths) > 6
    probe = _probe(3, 500, 20)
    mixed = _assert_equal(booster, probe, max_table_depth=4)
    none = _assert_equal(booster, probe, max_table_depth=0)
    assert none.table_bytes == 0 < mixed.table_bytes
    # A budget of bytes lowers the depth, never the answer.
    small = _assert_equal(booster, probe, max_table_bytes=mixed.table_bytes)
    assert small.table_bytes <= mixed.table_bytes


def test_regression_objectives_and_constant_trees() -> None:
    x, y = _data(4, 1500, 6)
    rng = np.random.default_rng(4)
    spend = y * rng.gamma(2.0, np.exp(np.nan_to_num(x[:, 0])))
    probe = _probe(4, 700, 6)
    for objective in ("tweedie", "regression", "gamma"):
        target = spend + 0.1 if objective == "gamma" else spend
        _assert_equal(_train({"objective": objective, "num_leaves": 31, "min_data_in_leaf": 10}, x, target, 40),
                      probe)
    # Nothing to split on: every tree is one leaf, all bias.
    constant = _train({"objective": "regression", "min_data_in_leaf": 10_000}, x, spend, 3)
    assert _assert_equal(constant, probe).table_bytes == 0


def test_early_stopped_booster_explains_the_trees_predict_uses() -> None:
    x, y = _data(5, 2000, 6)
    train = lgb.Dataset(x[:1500], y[:1500], categorical_feature=[1], params={"verbose": -1})
    valid = lgb.Dataset(x[1500:], y[1500:], reference=train)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "learning_rate": 0.3},
                        train, 200, valid_sets=[valid], callbacks=[lgb.early_stopping(5, verbose=False)],
                        keep_training_booster=True)  # keeps the trees past the best iteration
    assert 0 < booster.best_iteration < booster.current_iteration()
    _assert_equal(booster, _probe(5, 500, 6))


def test_threads_and_the_shared_explainer() -> None:
    x, y = _data(6, 1500, 6)
    booster = _train({"objective": "binary", "num_leaves": 31, "min_data_in_leaf": 5}, x, y, 20)
    probe = _probe(6, 3000, 6)
    explainer = explainer_for(booster)
    assert explainer_for(booster) is explainer  # built once per booster
    np.testing.assert_array_equal(explainer.contributions(probe, threads=3), explainer.contributions(probe))
    np.testing.assert_allclose(explainer.contributions(probe[:1]), booster.predict(probe[:1], pred_contrib=True),
                               rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="features"):
        explainer.contributions(probe[:, :5])


def test_the_churn_champion_of_the_tiny_world(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every active customer of the trained world, at its newest and an older snapshot."""
    from features.store import feature_store
    from pipelines.scoring.inputs import (
        default_as_of,
        population,
        read_features_as_of,
        resolve_service,
    )
    from tests.test_score_world import workspace_copy
    from training.model import load_model
    from training.tasks import CHURN

    with workspace_copy(tmp_path_factory, "explain") as ws:
        model = load_model(CHURN.model_name)
        plan = resolve_service(feature_store(ws), model.spec.feature_service)
        newest = default_as_of(ws)
        rows = []
        for as_of in (newest, newest.replace(year=newest.year - 1)):
            frame = read_features_as_of(plan, population(ws.lake, CHURN.key, as_of, model.spec.mode), as_of)
            rows.append(model.encoder.arrow(frame.to_arrow()))
        x = np.vstack(rows)
    assert len(x) > 500 and np.isnan(x).any()
    _assert_equal(model.booster, x)
    theirs = model.booster.predict(x, pred_contrib=True, num_threads=1)[:, :-1]
    np.testing.assert_allclose(model.contributions(x), theirs, rtol=0, atol=TOLERANCE)


def _nodes(node: dict) -> list[dict]:
    if "leaf_value" in node:
        return []
    return [node, *_nodes(node["left_child"]), *_nodes(node["right_child"])]


def _paths(node: dict, above: tuple = ()) -> list[tuple]:
    if "leaf_value" in node:
        return [above]
    return _paths(node["left_child"], (*above, node)) + _paths(node["right_child"], (*above, node))
