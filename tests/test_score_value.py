"""Batch customer value: the tier migration between two ``score clv`` runs, on hand-built
frames (exact values), which earlier run counts as "the previous one", and the batch
predictor against the model's own ``predict`` on a hand-built model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest

from crmdata.errors import CrmscoreError
from pipelines.scoring.migration import movement_counts, previous_partition, tier_migration

pytest_plugins = ["tests.conftest_serving"]

TIERS = ["A", "B", "C", "D"]


def test_tier_migration_on_a_hand_built_pair_of_runs() -> None:
    before = pl.DataFrame({"customer_id": ["c1", "c2", "c3", "c4", "c5", "c6", "c8"],
                           "tier": ["A", "C", "B", "D", None, "D", None]})
    after = pl.DataFrame({"customer_id": ["c7", "c6", "c5", "c4", "c3", "c2", "c1", "c9"],
                          "tier": ["D", "A", "C", None, "B", "A", "B", None]})
    got = tier_migration(before, after, "customer_id", "tier", TIERS)
    assert got.rows() == [
        ("c1", "A", "B", "downgraded"),
        ("c2", "C", "A", "upgraded"),
        ("c3", "B", "B", "same"),
        ("c4", "D", None, "lost"),  # no tier now (no features): lost
        ("c5", None, "C", "new"),  # no tier before: new
        ("c6", "D", "A", "upgraded"),
        ("c7", None, "D", "new"),  # not in the previous run at all
    ]  # c8 and c9 never had a tier: not listed
    assert got.columns == ["customer_id", "tier_before", "tier_after", "movement"]
    assert movement_counts(got) == {"upgraded": 2, "downgraded": 1, "same": 1, "new": 2, "lost": 1}


def test_the_first_run_makes_everyone_new() -> None:
    after = pl.DataFrame({"customer_id": ["b", "a", "c"], "tier": ["B", "A", None]})
    got = tier_migration(None, after, "customer_id", "tier", TIERS)
    assert got.rows() == [("a", None, "A", "new"), ("b", None, "B", "new")]
    assert movement_counts(got) == {"upgraded": 0, "downgraded": 0, "same": 0, "new": 2, "lost": 0}


def test_an_unknown_tier_or_a_duplicate_id_is_a_one_line_error() -> None:
    good = pl.DataFrame({"customer_id": ["a"], "tier": ["A"]})
    with pytest.raises(CrmscoreError, match=r"column tier: 1 values outside A/B/C/D \(e.g. 'E'\)"):
        tier_migration(good, pl.DataFrame({"customer_id": ["a"], "tier": ["E"]}), "customer_id", "tier", TIERS)
    with pytest.raises(CrmscoreError, match="column customer_id: 2 rows share an id"):
        tier_migration(pl.DataFrame({"customer_id": ["a", "a"], "tier": ["A", "B"]}), good, "customer_id",
                       "tier", TIERS)


def test_the_previous_run_is_the_newest_partition_before_the_date(tmp_path: Path) -> None:
    for day in ("2025-01-06", "2025-01-13", "2025-01-20"):
        (tmp_path / "clv" / f"as_of_date={day}").mkdir(parents=True)
    on = datetime(2025, 1, 13, tzinfo=UTC)
    assert previous_partition(tmp_path, "clv", on).name == "as_of_date=2025-01-06"  # a rerun: the same one
    assert previous_partition(tmp_path, "clv", datetime(2025, 2, 1, tzinfo=UTC)).name == "as_of_date=2025-01-20"
    assert previous_partition(tmp_path, "clv", datetime(2025, 1, 6, tzinfo=UTC)) is None


# --- a hand-built value model: what batch scoring (and the service) answer with ---------------

#: The run-rate and RFM columns of the customer_value view the model, the margin and the tier read.
VALUE_FEATURES = ["rfm_frequency", "rfm_monetary", "peer_expected_spend", "value_spend_365", "value_tickets_365",
                  "value_complaints_365", "rfm_segment"]


def value_frame(n: int = 400, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers with the value view's columns and a spend label drawn from a known function."""
    rng = np.random.default_rng(seed)
    frequency = rng.poisson(3, n)
    monetary = np.where(frequency > 0, rng.gamma(2.0, 40.0, n), np.nan)
    spend_365 = frequency * np.nan_to_num(monetary) * rng.uniform(0.2, 0.6, n)
    complaints = rng.poisson(0.6, n)
    frame = pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(n)],
        "rfm_frequency": frequency, "rfm_monetary": monetary,
        "peer_expected_spend": np.where(rng.random(n) < 0.1, np.nan, spend_365 * rng.uniform(0.5, 1.5, n)),
        "value_spend_365": spend_365, "value_tickets_365": rng.poisson(1.0, n), "value_complaints_365": complaints,
        "rfm_segment": rng.choice(["Champions", "Lost", "At risk", None], n),
    })
    buys = rng.random(n) < 1 / (1 + np.exp(-(frequency - 2.5)))
    y = np.where(buys, 0.8 * spend_365 + rng.gamma(2.0, 20.0, n), 0.0)
    return frame, y


def train_value_model(frame: pd.DataFrame, y: np.ndarray, features: list[str], categorical: list[str],
                      feature_service: str, version: str = "1") -> Any:
    """A tweedie ``ValueModel`` with quantile interval boosters, as training.value makes them."""
    import lightgbm as lgb

    from training.encoding import Encoder
    from training.model import ModelSpec, fit_categories
    from training.tasks import VALUE
    from training.value.scorer import ValueModel
    from training.value.spec import TierThresholds, ValueSettings, ValueSpec
    from training.value.tiers import fit_thresholds

    spec = ModelSpec(task=VALUE.key, model_name=VALUE.model_name, feature_service=feature_service,
                     entity_key=VALUE.key_column, features=features, categories=fit_categories(frame, categorical),
                     label_window_days=VALUE.window_days)
    x = Encoder.of(spec).frame(frame)
    base = {"verbose": -1, "num_threads": 1, "min_data_in_leaf": 10, "seed": 1, "deterministic": True}
    boosters = {role: lgb.train({**base, **params}, lgb.Dataset(x, y), 25) for role, params in (
        ("clv", {"objective": "tweedie"}), ("low", {"objective": "quantile", "alpha": 0.1}),
        ("high", {"objective": "quantile", "alpha": 0.9}))}
    settings = ValueSettings()
    model = ValueModel(name=VALUE.model_name, version=version, run_id=None, boosters=boosters,
                       spec=ValueSpec(model=spec, settings=settings, kind="tweedie", conformal=2.5,
                                      thresholds=TierThresholds(a_threshold=0.0, median_clv=0.0)))
    model.spec.thresholds = fit_thresholds(model.mean(x), settings)
    return model


def test_batch_scores_are_what_the_model_predicts() -> None:
    """The batch predictor (Arrow columns, no pandas frame of the features) answers exactly
    ``ValueModel.predict`` and ``ValueModel.reasons``; a customer without features gets nulls."""
    import pyarrow as pa

    from pipelines.scoring.types import FEATURE_TIMESTAMP
    from pipelines.scoring.value import ValuePredictor

    frame, y = value_frame()
    model = train_value_model(frame, y, VALUE_FEATURES, ["rfm_segment"], "customer_value")
    as_of = datetime(2025, 3, 3, tzinfo=UTC)
    stamps = pd.Series([as_of] * len(frame), dtype="datetime64[us, UTC]")
    stamps[5] = pd.NaT
    table = pa.Table.from_pandas(frame.assign(**{FEATURE_TIMESTAMP: stamps}), preserve_index=False)
    out = ValuePredictor(model, "customer_id", as_of, reasons="all").score_table(table).to_pandas()
    want = model.predict(frame)
    assert set(want["tier"]) == {"A", "B", "C", "D"}, "the hand-built world has every tier"
    found = np.arange(len(frame)) != 5
    for column in ("clv", "clv_low", "clv_high", "expected_margin"):
        assert out[column][found].tolist() == want[column][found].tolist()
    assert out["tier"][found].tolist() == want["tier"][found].tolist()
    assert out.loc[5, ["clv", "tier", "reasons"]].isna().all()
    assert out["rfm_segment"].tolist()[:20] == frame["rfm_segment"].tolist()[:20]
    assert out.columns.tolist() == ["customer_id", "as_of", "clv", "clv_low", "clv_high", "expected_margin", "tier",
                                    "rfm_segment", "reasons", "model_version", FEATURE_TIMESTAMP]
    reasons = model.reasons(frame.iloc[:40])
    for i in range(40):
        if i == 5:
            continue
        got = json.loads(out.loc[i, "reasons"])
        for side in ("up", "down"):
            assert [(r["feature"], r["value"]) for r in got[side]] == [(r.feature, r.value) for r in reasons[i][side]]
            assert [r["impact"] for r in got[side]] == pytest.approx([r.impact for r in reasons[i][side]], rel=1e-12)


# --- score clv on the tiny serving world (slow) ----------------------------------------------------


@pytest.mark.slow
def test_score_clv_twice_writes_scores_and_the_migration(serving_world: Any, tmp_path: Path) -> None:
    """Two dates scored on a copy of the tiny serving world: the score table is the model's
    answer on the point-in-time features, the second run's migration is the movement of every
    customer's tier between the two tables, and a rerun writes the same migration."""
    import shutil

    from crmdata.workspace import Workspace
    from features.build import read_build_summary
    from features.store import feature_store
    from pipelines.scoring.inputs import population, read_features_as_of, resolve_service
    from pipelines.scoring.migration import MIGRATION_TABLE
    from pipelines.scoring.table import partition_dir, read_manifest
    from pipelines.scoring.types import ScoreOptions
    from pipelines.scoring.value import score_value
    from training.tasks import VALUE

    home = tmp_path / "home"
    shutil.copytree(serving_world.ws.home, home, ignore=shutil.ignore_patterns("mlflow", "scores"))
    ws = Workspace(home)
    dates = sorted(read_build_summary(ws.feature_tables).as_of)
    first, second = dates[-2], dates[-1]
    plan = resolve_service(feature_store(ws), VALUE.feature_service)
    features = read_features_as_of(plan, population(ws.lake, VALUE.key, second), second).to_pandas()
    spend = pd.to_numeric(features["value_spend_365"]).fillna(0).to_numpy()
    rng = np.random.default_rng(9)
    y = np.where(rng.random(len(features)) < 0.6, 0.9 * spend + rng.gamma(2.0, 15.0, len(features)), 0.0)
    model = train_value_model(features, y, [*VALUE_FEATURES, "logins_30d", "tickets_90d"], ["rfm_segment"],
                              VALUE.feature_service)
    options = ScoreOptions(drift=False, threads=2, chunk_rows=200)

    one = score_value(ws, first, options, model=model)
    assert one.migration is not None and one.migration["previous_as_of"] is None
    assert one.migration["counts"]["new"] == one.rows - one.no_features
    two = score_value(ws, second, options, model=model)

    scores = pl.read_parquet(partition_dir(ws.scores, VALUE.key, second) / "*.parquet").sort("customer_id")
    assert scores.height == len(features) == two.rows
    want = model.predict(features)
    assert scores["clv"].to_list() == pytest.approx(want["clv"].tolist(), rel=1e-12)
    assert scores["tier"].to_list() == want["tier"].tolist()
    assert scores["rfm_segment"].to_list() == features["rfm_segment"].tolist()
    assert read_manifest(partition_dir(ws.scores, VALUE.key, second)).distribution.grades == {
        t: int((want["tier"] == t).sum()) for t in "ABCD"}

    before = dict(pl.read_parquet(partition_dir(ws.scores, VALUE.key, first) / "*.parquet").select("customer_id", "tier").rows())
    after = dict(scores.select("customer_id", "tier").rows())
    rank = {t: i for i, t in enumerate("ABCD")}
    expected = []
    for cid in sorted(set(before) | set(after)):
        b, a = before.get(cid), after.get(cid)
        if b is None and a is None:
            continue
        move = ("new" if b is None else "lost" if a is None else "upgraded" if rank[a] < rank[b]
                else "downgraded" if rank[a] > rank[b] else "same")
        expected.append((cid, b, a, move))
    migration = pl.read_parquet(partition_dir(ws.scores, MIGRATION_TABLE, second) / "*.parquet")
    assert migration.select("customer_id", "tier_before", "tier_after", "movement").rows() == expected
    assert migration["previous_as_of"].unique().to_list() == [first]
    counts = {m: sum(1 for e in expected if e[3] == m) for m in ("upgraded", "downgraded", "same", "new", "lost")}
    assert two.migration is not None and two.migration["counts"] == counts
    assert counts["same"] > 0

    again = score_value(ws, second, options, model=model)  # a rerun compares with the same previous run
    assert again.migration == two.migration
    assert pl.read_parquet(partition_dir(ws.scores, MIGRATION_TABLE, second) / "*.parquet").equals(migration)
