"""Issue 12, item 7: rolling-origin backtests.

Fast: origins, skipped folds, the table and the option names by hand; the
recommender's fold metrics on a hand-built lake. Slow: folds on the trained tiny world.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from pipelines.backtest import Backtest, Fold, attempt, fold_origins, none_ran

FIRST, LAST = datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, tzinfo=UTC)


def test_origins_step_back_from_the_newest_whose_window_the_data_covers() -> None:
    every = timedelta(days=30)
    newest = LAST - timedelta(days=90)  # 2024-10-02
    assert fold_origins(FIRST, LAST, 90, every, None, None) == [newest - i * every for i in range(5, -1, -1)]
    assert fold_origins(FIRST, LAST, 90, every, datetime(2024, 8, 1, tzinfo=UTC),
                        datetime(2024, 9, 30, tzinfo=UTC)) == [datetime(2024, 8, 1, tzinfo=UTC),
                                                               datetime(2024, 8, 31, tzinfo=UTC),
                                                               datetime(2024, 9, 30, tzinfo=UTC)]
    with pytest.raises(CrmscoreError, match=r"^--to 2024-12-01: its 90-day window ends after the data's last "
                                            r"event \(2024-12-31\); the newest possible origin is 2024-10-02$"):
        fold_origins(FIRST, LAST, 90, every, None, datetime(2024, 12, 1, tzinfo=UTC))
    with pytest.raises(CrmscoreError, match=r"^--from 2022-06-01 is not after the data's first event"):
        fold_origins(FIRST, LAST, 90, every, datetime(2022, 6, 1, tzinfo=UTC), None)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    from tests.test_score_world import workspace_copy

    with workspace_copy(tmp_path_factory, "backtest") as workspace:
        yield workspace


@pytest.mark.slow
def test_a_fold_trains_as_of_its_origin_registers_nothing_and_is_judged_on_the_window_after(ws: Workspace) -> None:
    from features.labels import churn_labels
    from pipelines.backtest import backtest
    from training.registry import configure_mlflow
    from training.tasks import get_task

    client = configure_mlflow()  # this workspace's store (an earlier test may have pointed MLflow elsewhere)
    versions = {v.version for v in client.search_model_versions("name='crm-churn'")}
    champion = client.get_model_version_by_alias("crm-churn", "champion").version
    from crmdata.lake import event_span

    first, last = event_span(ws.lake)
    origin = last - timedelta(days=90)
    early = first + timedelta(days=20)  # too little history before it: the trainer refuses
    result = backtest(ws, get_task("churn"), start=early, end=origin, every=origin - early)

    assert {v.version for v in client.search_model_versions("name='crm-churn'")} == versions
    assert client.get_model_version_by_alias("crm-churn", "champion").version == champion
    skipped, fold = result.folds
    assert skipped.origin == early and skipped.run_id is None and skipped.roc_auc is None
    assert skipped.skipped is not None and skipped.skipped.startswith("need ≥")
    assert result.ran == [fold]
    assert fold.origin == origin
    assert fold.rows == churn_labels(ws.lake, [origin], window_days=90, mode="subscription").height
    assert 0.6 < fold.roc_auc <= 1 and 0 < fold.positive_rate < 1
    run = client.get_run(fold.run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert run.data.tags["trained_as_of"] == f"{origin:%Y-%m-%d}"
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["backtest"] == "true" and parent.data.metrics["roc_auc"] == fold.roc_auc
    assert parent.data.tags[f"skipped.{early:%Y-%m-%d}"] == skipped.skipped
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {"backtest.json", "plots"}


@pytest.mark.slow
def test_an_nbp_fold_fits_as_of_its_origin_registers_nothing_and_is_judged_against_popularity(
        ws: Workspace) -> None:
    from crmdata.lake import event_span
    from pipelines.backtest import backtest
    from training.nbp.interactions import read_lake, time_split
    from training.nbp.train import NbpParams
    from training.registry import configure_mlflow
    from training.tasks import get_task

    client = configure_mlflow()
    name = "name='crm-next-best-product'"
    versions = {v.version for v in client.search_model_versions(name)}
    champion = client.get_model_version_by_alias("crm-next-best-product", "champion").version
    first, last = event_span(ws.lake)
    origin = last - timedelta(days=30)
    result = backtest(ws, get_task("nbp"), start=origin, end=origin)

    assert {v.version for v in client.search_model_versions(name)} == versions
    assert client.get_model_version_by_alias("crm-next-best-product", "champion").version == champion
    [fold] = result.folds
    assert result.kind == "recommender" and fold.skipped is None and fold.roc_auc is None
    # Judged: the customers with an order before the origin who bought an eligible product in the 30 days after.
    split = time_split(read_lake(ws.lake), 30, origin, NbpParams().confidence)
    assert fold.rows == split.test_rows.size > 0
    assert 0 < fold.ndcg_at_10 <= fold.hit_rate_at_10 <= 1
    assert 0 < fold.popularity_ndcg_at_10 <= fold.popularity_hit_rate_at_10 <= 1
    run = client.get_run(fold.run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert run.data.tags["trained_as_of"] == f"{origin:%Y-%m-%d}"
    assert run.data.params["cutoff"] == f"{origin - timedelta(days=30):%Y-%m-%d}"  # its own test window ends at T
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["ndcg_at_10"] == fold.ndcg_at_10
    assert parent.data.metrics["popularity_ndcg_at_10"] == fold.popularity_ndcg_at_10

    # An origin with no orders far enough before it: no fold ran, and the error says why.
    early = first + timedelta(days=10)
    with pytest.raises(CrmscoreError, match=rf"^no fold of the nbp backtest ran \(1 skipped\): "
                                            rf"{early:%Y-%m-%d}: "):
        backtest(ws, get_task("nbp"), start=early, end=early)


# --- skipped folds, the table, the option names (no training) ---------------------------------

TOO_EARLY = "need ≥ 4 cutoffs with labels (train, validation, holdout), found 2"


def day(d: int) -> datetime:
    return datetime(2024, 1, d, tzinfo=UTC)


def fake_fold(origin: datetime) -> Fold:
    """Refuses the first two days of January like a trainer with too little history."""
    if origin < day(3):
        raise CrmscoreError(f"{TOO_EARLY}\nsecond line, not kept")
    return Fold(origin=origin, rows=100, positive_rate=0.25, roc_auc=0.75, pr_auc=0.5, ece=0.02, lift_top10=2.5,
                baseline_roc_auc=0.7, run_id="r" * 32, seconds=1.0)


def test_a_refused_origin_is_a_skipped_fold_with_the_first_line_of_its_reason() -> None:
    folds = [attempt(day(d), fake_fold) for d in (1, 2, 3)]
    assert [f.skipped for f in folds] == [TOO_EARLY, TOO_EARLY, None]
    assert [f.rows for f in folds] == [None, None, 100]
    assert folds[0].run_id is None and folds[0].roc_auc is None


def test_a_bug_is_not_a_skipped_fold() -> None:
    def broken(origin: datetime) -> Fold:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        attempt(day(1), broken)


def test_when_no_fold_ran_the_error_gives_each_reason_once_with_its_origins() -> None:
    folds = [attempt(day(d), fake_fold) for d in (1, 2)]
    folds.append(Fold(origin=day(9), seconds=0.5, skipped="the 90-day window after 2024-01-09 has only one class"))
    assert none_ran("churn", folds) == (
        "no fold of the churn backtest ran (3 skipped): 2024-01-01, 2024-01-02: " + TOO_EARLY
        + "; 2024-01-09: the 90-day window after 2024-01-09 has only one class")


def printed(table: object, width: int) -> list[str]:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_the_default_table_fits_80_columns_and_wide_carries_the_reason_in_the_row() -> None:
    result = Backtest(task="churn", kind="binary", window_days=90, every_days=30, parent_run_id="p", seconds=3.0,
                      folds=[attempt(day(d), fake_fold) for d in (1, 2, 3)])
    assert result.ran == result.folds[2:]
    narrow = printed(result.render(), 200)  # laid out as wide as it wants: still ≤ 80
    assert max(map(len, narrow)) <= 80
    assert narrow[0] == "churn backtest: 3 folds (2 skipped), 90-day windows"
    rows = [line.split() for line in narrow if line.startswith("2024-")]
    assert rows == [["2024-01-01", "skipped"], ["2024-01-02", "skipped"],
                    ["2024-01-03", "100", "0.250", "0.7500", "0.5000", "0.0200", "2.50", "0.7000"]]
    assert result.notes() == [f"skipped 2024-01-01: {TOO_EARLY}", f"skipped 2024-01-02: {TOO_EARLY}"]
    wide = printed(result.render(wide=True), 300)
    assert max(map(len, wide)) > 80
    assert next(line for line in wide if line.startswith("2024-01-01")).rstrip().endswith(TOO_EARLY)
    third = next(line for line in wide if line.startswith("2024-01-03")).split()
    assert third[-2:] == ["1", "r" * 32]
    as_json = result.model_dump(mode="json", exclude_none=True)
    assert as_json["folds"][0] == {"origin": "2024-01-01T00:00:00Z", "seconds": as_json["folds"][0]["seconds"],
                                   "skipped": TOO_EARLY}


def test_a_ranking_table_fits_80_columns() -> None:
    fold = Fold(origin=day(3), rows=12_345, ndcg_at_10=0.25, popularity_ndcg_at_10=0.125, hit_rate_at_10=0.5,
                popularity_hit_rate_at_10=0.375, run_id="r" * 32, seconds=12.0)
    result = Backtest(task="nbp", kind="recommender", window_days=30, every_days=30, parent_run_id="p", seconds=3.0,
                      folds=[Fold(origin=day(1), seconds=0.1, skipped=TOO_EARLY), fold])
    narrow = printed(result.render(), 200)
    assert max(map(len, narrow)) <= 80
    assert [line.split() for line in narrow if line.startswith("2024-01-03")] == [
        ["2024-01-03", "12,345", "0.2500", "0.1250", "0.5000", "0.3750"]]


@pytest.mark.parametrize("option", ["--from", "--to", "--as-of"])
def test_a_bad_date_names_its_option(option: str) -> None:
    from pipelines.scoring.inputs import parse_as_of

    with pytest.raises(CrmscoreError, match=f"^{option} 'next tuesday': expected a date, YYYY-MM-DD$"):
        parse_as_of("next tuesday", option)
    assert parse_as_of("1997-10-01", option) == datetime(1997, 10, 1, tzinfo=UTC)


def test_the_backtest_command_names_the_bad_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    for option in ("--from", "--to"):
        out = CliRunner().invoke(app, ["--home", str(tmp_path), "backtest", "nbp", option, "1997-13-01"])
        assert out.exit_code == 1
        assert f"{option} '1997-13-01': expected a date" in out.output


# --- the recommender's fold, on a hand-built lake --------------------------------------------

ORIGIN = datetime(2024, 6, 1, tzinfo=UTC)
PRODUCTS = [f"P{j:02d}" for j in range(1, 13)]  # P01 is bought once (a one-off); the others are repeatable


def popularity_lake(directory: Path) -> Path:
    """C01 … C12, one order of each product they bought, all ten days before the origin.

    Ck buys P01 … P(13-k), so Pj has 13 - j buyers: popularity ranks P01, P02, …, P12.
    In the 30 days after the origin: C01 buys P12, C12 buys P02, C06 buys P01 (a one-off
    it owns: never relevant) and P11. C07 buys nothing.
    """
    from tests.factories import write_lake
    from tests.test_nbp import table

    before = ORIGIN - timedelta(days=10)
    customers = [{"customer_id": f"C{k:02d}", "signup_at": datetime(2024, 1, 1, tzinfo=UTC), "country": "US",
                  "segment": "smb", "industry": "retail", "acquisition_channel": "web"} for k in range(1, 13)]
    orders = [(f"C{k:02d}", p, before) for k in range(1, 13) for p in PRODUCTS[:13 - k]]
    orders += [("C01", "P12", ORIGIN + timedelta(days=3)), ("C12", "P02", ORIGIN + timedelta(days=4)),
               ("C06", "P01", ORIGIN + timedelta(days=5)), ("C06", "P11", ORIGIN + timedelta(days=6))]
    rows = [{"order_id": f"O{i}", "customer_id": c, "product_id": p, "ordered_at": t, "quantity": 1, "amount": 10.0}
            for i, (c, p, t) in enumerate(orders)]
    products = [{"product_id": p, "name": p, "category": "music", "price": 10.0, "is_repeatable": p != "P01"}
                for p in PRODUCTS]
    return write_lake(directory, {"customers": table("customers", customers), "products": table("products", products),
                                  "orders": table("orders", rows)})


def fitted(lake: Path, cutoff: datetime, window_days: int = 30) -> object:
    from tests.test_nbp import PARAMS
    from training.nbp.interactions import read_lake, time_split
    from training.nbp.train import build_recommender, fit_factors

    data = read_lake(lake)
    split = time_split(data, window_days, cutoff, PARAMS.confidence)
    return build_recommender(data, split, "als", PARAMS, *fit_factors(split.train.confidence, "als", PARAMS))


def test_the_popularity_baseline_ranks_by_buyers_before_the_origin_without_owned_one_offs(tmp_path: Path) -> None:
    from training.nbp.evaluate import evaluate_at_origin
    from training.nbp.interactions import read_lake

    lake = popularity_lake(tmp_path / "lake")
    got = evaluate_at_origin(fitted(lake, ORIGIN), read_lake(lake), ORIGIN, 30)
    # Judged: C01, C06, C12 (C06's P01 is an owned one-off, so only its P11 counts). Everyone owns
    # P01, so popularity recommends P02 … P11: C01's P12 is 11th (a miss), C12's P02 is 1st, and
    # C06's P11 is 10th (DCG 1/log2(11)); each has one relevant product (IDCG 1).
    assert got["rows"] == 3
    assert got["popularity_ndcg_at_10"] == pytest.approx((0 + 1 + 1 / math.log2(11)) / 3, abs=1e-12)
    assert got["popularity_hit_rate_at_10"] == pytest.approx(2 / 3, abs=1e-12)
    assert 0 <= got["ndcg_at_10"] <= got["hit_rate_at_10"] <= 1


def test_a_recommender_that_knows_tastes_beats_popularity_at_the_origin(tmp_path: Path) -> None:
    """The two taste groups of tests/test_nbp.py: popularity puts the same refill first for
    everybody, the model each group's own; the recommender (fitted a month before the
    origin) is given the orders up to the origin, as scoring on that date would give it."""
    from tests.factories import write_lake
    from tests.test_nbp import CUTOFF, make_tables
    from training.nbp.evaluate import evaluate_at_origin
    from training.nbp.interactions import read_lake

    lake = write_lake(tmp_path / "lake", make_tables())
    got = evaluate_at_origin(fitted(lake, CUTOFF), read_lake(lake), CUTOFF, 30)
    assert got["rows"] == 80  # 40 A-buyers and 40 B-buyers bought in the window; LATE had no order before it
    assert got["hit_rate_at_10"] == got["popularity_hit_rate_at_10"] == 1.0  # 6 products: all in any top 10
    assert got["ndcg_at_10"] > got["popularity_ndcg_at_10"] + 0.1


# --- customer value: the fold's metrics on hand-built frames, the fold on the trained world ------

H = 73  # a fifth of the rule's 365 days


def value_frames(peer: bool) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Ten customers: the model orders them exactly (clv = spend + 1), last year's spend exactly
    backwards, and the peer (when there) cannot tell them apart."""
    from features.peer import EXPECTED_SPEND
    from training.value.spec import SPEND_365

    actual = np.array([0, 0, 0, 0, 0, 10, 10, 20, 20, 40], dtype=float)
    frame = pd.DataFrame({SPEND_365: 100.0 - actual, **({EXPECTED_SPEND: np.ones(10)} if peer else {})})
    predicted = pd.DataFrame({"clv": actual + 1, "clv_low": np.zeros(10), "clv_high": np.full(10, 15.0)})
    return actual, predicted, frame


def test_a_value_fold_is_judged_like_training_judges_its_holdout() -> None:
    from pipelines.backtest import value_fold_metrics

    got = value_fold_metrics(*value_frames(peer=True), H)
    assert set(got) == {"rows", "normalized_gini", "decile_mape", "total_error", "coverage", "rule_gini",
                        "peer_gini"}
    assert got["rows"] == 10
    assert got["normalized_gini"] == pytest.approx(1.0, abs=1e-12)
    # One customer per decile; the five who spent: |11-10|/10, |11-10|/10, 1/20, 1/20, 1/40.
    assert got["decile_mape"] == pytest.approx((0.1 + 0.1 + 0.05 + 0.05 + 0.025) / 5, abs=1e-12)
    assert got["total_error"] == pytest.approx(110 / 100 - 1, abs=1e-12)
    assert got["coverage"] == 0.7  # spend ≤ 15: the five at 0 and the two at 10
    assert got["rule_gini"] == pytest.approx(-1.0, abs=1e-12)  # exactly backwards
    assert got["peer_gini"] == pytest.approx(0.0, abs=1e-12)  # one tie group: no better than random

    assert "peer_gini" not in value_fold_metrics(*value_frames(peer=False), H)
    _, predicted, frame = value_frames(peer=False)
    with pytest.raises(CrmscoreError, match=r"^orders: the 73 days after the origin have no spend \(10 customers\)$"):
        value_fold_metrics(np.zeros(10), predicted, frame, H)


def test_a_value_table_fits_80_columns() -> None:
    fold = Fold(origin=day(3), rows=123_456, normalized_gini=0.6123, decile_mape=0.123, total_error=-0.045,
                coverage=0.812, rule_gini=0.5012, peer_gini=0.5534, run_id="r" * 32, seconds=95.0)
    result = Backtest(task="clv", kind="value", window_days=365, every_days=30, parent_run_id="p", seconds=3.0,
                      folds=[Fold(origin=day(1), seconds=0.1, skipped=TOO_EARLY), fold])
    narrow = printed(result.render(), 200)
    assert max(map(len, narrow)) <= 80
    assert [line.split() for line in narrow if line.startswith("2024-01-03")] == [
        ["2024-01-03", "123,456", "0.6123", "0.123", "-0.045", "0.812", "0.5012", "0.5534"]]
    wide = printed(result.render(wide=True), 300)
    assert next(line for line in wide if line.startswith("2024-01-03")).split()[-2:] == ["95", "r" * 32]


@pytest.mark.slow
def test_a_clv_fold_trains_as_of_its_origin_registers_nothing_and_is_judged_on_the_spend_after(
        ws: Workspace) -> None:
    from crmdata.lake import event_span
    from features.labels import value_labels
    from pipelines.backtest import backtest
    from training.registry import configure_mlflow
    from training.tasks import VALUE

    client = configure_mlflow()
    name = f"name='{VALUE.model_name}'"
    versions = {v.version for v in client.search_model_versions(name)}
    _, last = event_span(ws.lake)
    origin = last - timedelta(days=365)
    # Orders from 2022-01-01, value-truth cutoffs from 2022-07-02: none has its year observed by
    # two years before the newest origin, so the trainer refuses that origin.
    early = origin - timedelta(days=730)
    result = backtest(ws, VALUE, start=early, end=origin, every=origin - early)

    assert {v.version for v in client.search_model_versions(name)} == versions
    skipped, fold = result.folds
    assert result.kind == "value" and result.window_days == 365
    assert skipped.origin == early and skipped.run_id is None and skipped.normalized_gini is None
    assert skipped.skipped is not None and skipped.skipped.startswith("orders: need ≥ 3 cutoffs"), skipped.skipped
    assert result.ran == [fold] and fold.origin == origin and fold.roc_auc is None
    assert fold.rows == value_labels(ws.lake, [origin], window_days=365).height
    values = [fold.normalized_gini, fold.decile_mape, fold.total_error, fold.coverage, fold.rule_gini]
    assert all(math.isfinite(v) for v in values), values
    assert 0 < fold.normalized_gini <= 1 and 0 < fold.coverage <= 1 and fold.decile_mape >= 0
    run = client.get_run(fold.run_id)
    assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert run.data.tags["trained_as_of"] == f"{origin:%Y-%m-%d}"
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["backtest"] == "true" and parent.data.tags["task"] == "clv"
    assert parent.data.metrics["normalized_gini"] == fold.normalized_gini
    assert parent.data.metrics["rule_gini"] == fold.rule_gini
    assert parent.data.tags[f"skipped.{early:%Y-%m-%d}"] == skipped.skipped
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} >= {"backtest.json", "plots"}
