"""Batch scoring end to end on the trained tiny world: output, reconciliation, idempotent
reruns, atomic writes, the point-in-time read, reasons, and publishing the scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace
from tests.test_score_world import workspace_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    with workspace_copy(tmp_path_factory, "score") as workspace:
        yield workspace


def _table(path: Path) -> pd.DataFrame:
    files = sorted(str(p) for p in path.glob("*.parquet"))
    return ds.dataset(files, format="parquet").to_table().to_pandas()


def _listing(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_score_churn_through_the_cli(ws: Workspace) -> None:
    from features.labels import churn_population
    from pipelines.cli import app
    from pipelines.scoring.inputs import default_as_of

    result = CliRunner().invoke(app, ["score", "churn", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    as_of = default_as_of(ws)
    population = churn_population(ws.lake, as_of)
    assert out["rows"] == population.height > 0
    assert out["seconds"] > 0
    partition = Path(out["output"])
    assert partition == ws.scores / "churn" / f"as_of_date={as_of:%Y-%m-%d}"
    table = _table(partition)
    assert list(table.columns) == ["customer_id", "as_of", "probability", "score", "band", "reasons",
                                   "model_version", "feature_timestamp"]
    assert sorted(table["customer_id"]) == population["customer_id"].to_list()
    assert table["probability"].between(0, 1).all() and table["score"].between(1, 99).all()
    assert set(table["band"]) <= {"high", "medium", "low"}
    assert (table["as_of"] == pd.Timestamp(as_of)).all()
    reasons = json.loads(table["reasons"].iloc[0])
    assert set(reasons) == {"up", "down"} and all({"feature", "value", "impact"} == set(r) for r in reasons["up"])

    manifest = json.loads((partition / "_manifest.json").read_text())
    assert manifest["entities"] == manifest["rows"] == population.height
    assert manifest["model_name"] == "crm-churn" and manifest["model_version"] == out["model_version"]
    assert sum(manifest["distribution"]["grades"].values()) == population.height
    assert set(manifest["stages"]) >= {"read", "prepare", "predict", "calibrate_grade", "reasons", "write"}
    assert manifest["inputs"]["view customer_features"].endswith("customer.parquet")
    # The drift report found the champion's holdout and went to MLflow.
    drift = manifest["drift"]
    assert drift["reference_rows"] > 0 and drift["note"] is None and drift["mlflow_run_id"]
    from mlflow import MlflowClient

    run = MlflowClient().get_run(drift["mlflow_run_id"])
    assert "psi.days_since_last_order" in run.data.metrics and "psi_score" in run.data.metrics


def test_the_offline_read_equals_get_historical_features(ws: Workspace) -> None:
    from features.store import feature_store
    from features.training import training_frame
    from pipelines.scoring.inputs import (
        default_as_of,
        population,
        read_features_as_of,
        resolve_service,
    )

    store = feature_store(ws)
    plan = resolve_service(store, "churn_v1")
    newest = default_as_of(ws)
    # At a snapshot date and three days after one (the newest row before it, within the TTL).
    for as_of in (newest, newest - timedelta(days=4)):
        sample = population(ws.lake, "churn", as_of, "subscription").sample(60, seed=1).sort("customer_id")
        mine = read_features_as_of(plan, sample, as_of).to_pandas()
        labels = sample.with_columns(pl.lit(as_of).alias("event_timestamp"))
        feast = training_frame(store, "churn_v1", labels).sort_values("customer_id").reset_index(drop=True)
        assert mine["feature_timestamp"].notna().all()
        for column in plan.features:
            left, right = mine[column], feast[column]
            if left.dtype == object or right.dtype == object:
                assert left.astype(object).where(left.notna(), None).tolist() == \
                    right.astype(object).where(right.notna(), None).tolist(), column
            else:
                np.testing.assert_array_equal(left.to_numpy(dtype=float), right.to_numpy(dtype=float), column)


def test_the_predictor_is_the_scoring_model(ws: Workspace) -> None:
    """Encoding, probabilities, grades and reasons equal ScoringModel's, value for value."""
    from features.store import feature_store
    from pipelines.scoring.inputs import (
        default_as_of,
        population,
        read_features_as_of,
        resolve_service,
    )
    from pipelines.scoring.predict import BinaryPredictor
    from training.model import load_model, prepare_features

    model = load_model("crm-lead-scoring")
    as_of = default_as_of(ws)
    plan = resolve_service(feature_store(ws), model.spec.feature_service)
    frame = read_features_as_of(plan, population(ws.lake, "lead", as_of), as_of).head(300)
    table = frame.to_arrow(compat_level=pl.CompatLevel.oldest())
    pdf = frame.to_pandas()
    predictor = BinaryPredictor.from_model(model, "lead", "grade", as_of, "all")
    np.testing.assert_array_equal(predictor.encode(table), prepare_features(pdf, model.spec).to_numpy())
    out = predictor.score_table(table).to_pandas()
    expected = model.score(pdf)
    np.testing.assert_allclose(out["probability"], expected["probability"], rtol=0, atol=1e-12)
    assert out["score"].tolist() == expected["score"].tolist()
    assert out["grade"].tolist() == expected["grade"].tolist()
    for mine, theirs in zip(out["reasons"], model.reasons(pdf), strict=True):
        got = json.loads(mine)
        for direction in ("up", "down"):
            assert [(r["feature"], r["impact"]) for r in got[direction]] == \
                [(r.feature, r.impact) for r in theirs[direction]]
            for r, t in zip(got[direction], theirs[direction], strict=True):
                assert r["value"] == t.value or float(r["value"]) == float(t.value)


def test_reasons_all_top_none(ws: Workspace) -> None:
    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions

    top = score(ws, "lead", options=ScoreOptions(reasons="top", drift=False))
    table = _table(Path(top.output))
    explained = table["reasons"].notna()
    assert (explained == table["grade"].isin(["A", "B"])).all() and explained.any()
    none = score(ws, "lead", options=ScoreOptions(reasons="none", drift=False))
    assert _table(Path(none.output))["reasons"].isna().all()
    assert none.reasons == "none" and top.reasons == "top"


def test_a_rerun_replaces_the_date_and_never_duplicates(ws: Workspace) -> None:
    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions

    options = ScoreOptions(drift=False, chunk_rows=200, threads=2)
    first = score(ws, "lead", options=options)
    second = score(ws, "lead", options=options.model_copy(update={"chunk_rows": 10_000, "threads": 1}))
    assert first.output == second.output and second.rows == first.rows
    whole = ds.dataset(str(ws.scores / "lead"), format="parquet", partitioning="hive").to_table()
    assert whole.num_rows == second.rows  # one date, one row per lead
    assert len(list(Path(second.output).glob("*.parquet"))) == 1  # the first run's files are gone
    assert not list((ws.scores / ".staging").iterdir())


def test_a_missing_entity_fails_loudly_and_publishes_nothing(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.scoring.job import score
    from pipelines.scoring.predict import BinaryPredictor
    from pipelines.scoring.table import ReconciliationError
    from pipelines.scoring.types import ScoreOptions

    good = score(ws, "lead", options=ScoreOptions(drift=False, reasons="none"))
    before = _listing(Path(good.output))
    original = BinaryPredictor.score_table
    dropped: list[str] = []

    def lossy(self: BinaryPredictor, table, timings=None):  # type: ignore[no-untyped-def]
        out = original(self, table, timings)
        dropped.append(out.column(self.key)[0].as_py())
        return out.slice(1)  # a bug that loses the first row of every chunk

    monkeypatch.setattr(BinaryPredictor, "score_table", lossy)
    with pytest.raises(ReconciliationError, match="entities have no score") as caught:
        score(ws, "lead", options=ScoreOptions(drift=False, reasons="none", chunk_rows=100))
    assert dropped[0] in str(caught.value)
    assert _listing(Path(good.output)) == before
    assert not list((ws.scores / ".staging").iterdir())


def test_a_crash_mid_job_leaves_the_previous_output_intact(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions

    good = score(ws, "lead", options=ScoreOptions(drift=False, reasons="none"))
    before = _listing(Path(good.output))
    written = []
    real_write = pq.write_table

    def crash_on_third(table, where, **kwargs):  # type: ignore[no-untyped-def]
        if len(written) == 2:
            raise OSError("disk full")
        written.append(where)
        real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", crash_on_third)
    with pytest.raises(OSError, match="disk full"):
        score(ws, "lead", options=ScoreOptions(drift=False, reasons="none", chunk_rows=50, threads=1))
    assert len(written) == 2
    assert _listing(Path(good.output)) == before
    assert not list((ws.scores / ".staging").iterdir())


def test_population_is_the_training_population(ws: Workspace) -> None:
    """Scoring at a cutoff scores exactly the rows the labels would be built for."""
    from features.build import read_build_summary
    from features.labels import churn_labels, churn_population, lead_conversion_labels, open_leads

    cutoff = sorted(read_build_summary(ws.feature_tables).as_of)[-20]
    labels = churn_labels(ws.lake, [cutoff], window_days=30, mode="subscription")
    assert churn_population(ws.lake, cutoff, mode="subscription")["customer_id"].to_list() == \
        labels["customer_id"].sort().to_list()
    leads = lead_conversion_labels(ws.lake, [cutoff], window_days=30)
    assert open_leads(ws.lake, cutoff)["lead_id"].to_list() == leads["lead_id"].sort().to_list()


def test_next_best_products_for_every_customer(ws: Workspace) -> None:
    from pipelines.scoring.inputs import default_as_of, population
    from pipelines.scoring.job import score
    from pipelines.scoring.types import ScoreOptions

    run = score(ws, "nbp", options=ScoreOptions(top_products=5))
    table = _table(Path(run.output))
    customers = population(ws.lake, "nbp", default_as_of(ws))["customer_id"].to_list()
    assert sorted(table["customer_id"]) == customers and run.rows == len(customers)
    lengths = table["product_ids"].map(len)
    assert lengths.between(1, 5).all()
    assert (table["product_reasons"].map(len) == lengths).all()
    assert run.distribution.grades["cold_start"] == int(table["cold_start"].sum())


def test_pushed_scores_are_read_from_the_online_store(ws: Workspace) -> None:
    from features.catalog import SCORE_VIEW_NAMES
    from features.store import feature_store
    from pipelines.scoring.job import score
    from pipelines.scoring.publish import push_online
    from pipelines.scoring.types import ScoreOptions

    store = feature_store(ws)
    for task, key, column in (("churn", "customer_id", "probability"), ("nbp", "customer_id", "product_ids")):
        run = score(ws, task, options=ScoreOptions(drift=False))
        table = _table(Path(run.output)).set_index(key)
        pushed = push_online(ws, task, store=store)
        assert pushed.rows == run.rows
        ids = table.index[:25].tolist()
        # What an app does: the score view's features by entity key, through Feast.
        view = store.get_feature_view(SCORE_VIEW_NAMES[task])
        online = store.get_online_features(features=[f"{view.name}:{f.name}" for f in view.features],
                                           entity_rows=[{key: i} for i in [*ids, "nobody"]]).to_df().set_index(key)
        assert pd.isna(online.loc["nobody", "model_version"])
        for i in ids:
            got, want = online.loc[i, column], table.loc[i, column]
            if task == "churn":
                assert got == want
                assert json.loads(online.loc[i, "reasons"]) == json.loads(table.loc[i, "reasons"])
            else:
                assert list(got) == list(want)
            assert online.loc[i, "model_version"] == run.model_version


@pytest.mark.postgres
def test_scores_into_postgresql(ws: Workspace) -> None:
    import uuid

    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
    from pipelines.scoring.job import score
    from pipelines.scoring.publish import write_postgres
    from pipelines.scoring.types import ScoreOptions

    url = "postgresql://postgres@127.0.0.1:5432/test"
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not reachable ({exc})")
    schema = f"crmscore_test_{uuid.uuid4().hex[:10]}"
    run = score(ws, "churn", options=ScoreOptions(drift=False))
    try:
        first = write_postgres(ws, "churn", url, schema=schema)
        again = write_postgres(ws, "churn", url, schema=schema)  # same as_of: replaced, not appended
        assert first.rows == again.rows == run.rows
        with psycopg.connect(url) as conn:
            rows = conn.execute(f'SELECT count(*), count(DISTINCT customer_id), min(as_of), '
                                f'max(reasons->\'up\'->0->>\'feature\') IS NOT NULL '
                                f'FROM "{schema}".churn_scores').fetchone()
            assert rows[0] == rows[1] == run.rows
            assert rows[2] == run.as_of and rows[3]
            one = conn.execute(f'SELECT customer_id, probability, band FROM "{schema}".churn_scores '
                               "ORDER BY customer_id LIMIT 1").fetchone()
        table = _table(Path(run.output)).sort_values("customer_id").iloc[0]
        assert one == (table["customer_id"], table["probability"], table["band"])
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_score_all_skips_what_has_no_champion(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from pipelines.cli import app
    from training.tasks import TASKS

    monkeypatch.setitem(TASKS, "nbp", dataclasses.replace(TASKS["nbp"], model_name="crm-no-such-model"))
    result = CliRunner().invoke(app, ["score", "all", "--reasons", "none", "--no-drift", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    runs = {r["task"]: r for r in out["runs"]}
    assert list(runs) == list(TASKS)  # every task, in the registry's order
    assert "skipped" in runs["nbp"] and "skipped" not in runs["churn"]
    assert out["rows"] == sum(r.get("rows", 0) for r in out["runs"])


def test_unknown_as_of_and_missing_scores_are_clear_errors(ws: Workspace) -> None:
    from pipelines.scoring.inputs import parse_as_of
    from pipelines.scoring.publish import push_online

    with pytest.raises(CrmscoreError, match="expected a date"):
        parse_as_of("next tuesday")
    with pytest.raises(CrmscoreError, match="no lead scores as of 1999-01-01"):
        push_online(ws, "lead", parse_as_of("1999-01-01"))


def test_the_local_engine_refuses_spark_tables(ws: Workspace) -> None:
    import dataclasses

    from features.store import feature_store
    from pipelines.scoring.inputs import default_as_of, read_features_as_of, resolve_service

    plan = resolve_service(feature_store(ws), "churn_v1")
    as_table = dataclasses.replace(plan, views=(dataclasses.replace(plan.views[0], table="warehouse.customers"),))
    with pytest.raises(CrmscoreError, match="score them with --engine spark"):
        read_features_as_of(as_table, pl.DataFrame({"customer_id": ["C1"]}), default_as_of(ws))


def test_scoring_as_of_a_date_without_a_snapshot_builds_it_and_names_it(ws: Workspace) -> None:
    from features.build import read_build_summary
    from pipelines.cli import app

    before = read_build_summary(ws.feature_tables).as_of
    date = before[-1] - timedelta(days=3)
    assert date not in before
    result = CliRunner().invoke(app, ["score", "churn", "--as-of", f"{date:%Y-%m-%d}", "--no-drift", "--json",
                                      "--reasons", "none"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    # The features are those of the date itself, not of the newest snapshot before it.
    assert out["feature_timestamps"] == [date.isoformat()]
    assert read_build_summary(ws.feature_tables).as_of == sorted([*before, date])  # nothing dropped


def test_entities_without_features_fail_the_run_unless_allowed(ws: Workspace) -> None:
    from pipelines.scoring.inputs import default_as_of, population
    from pipelines.scoring.job import score_binary
    from pipelines.scoring.table import partition_dir
    from pipelines.scoring.types import ScoreOptions
    from training.model import load_model

    as_of = default_as_of(ws)
    model = load_model("crm-churn")
    pop = population(ws.lake, "churn", as_of, model.spec.mode)
    ghosts = pl.concat([pop, pl.DataFrame({"customer_id": ["C-ghost"]})])
    options = ScoreOptions(drift=False, reasons="none")
    partition = partition_dir(ws.scores, "churn", as_of)  # one per day: earlier tests may have written it
    before = _listing(partition) if partition.exists() else None
    with pytest.raises(CrmscoreError, match=rf"^churn as of .*: 1 of {ghosts.height:,} entities have no features "
                                            r".*--allow-missing"):
        score_binary(ws, "churn", model, as_of, options, entities=ghosts)
    assert (_listing(partition) if partition.exists() else None) == before
    assert not list((ws.scores / ".staging").iterdir())
    allowed = score_binary(ws, "churn", model, as_of, options.model_copy(update={"allow_missing": True}),
                           entities=ghosts)
    assert allowed.rows == ghosts.height and allowed.no_features == 1


def test_score_as_of_outside_the_data_is_one_line_and_exit_1(ws: Workspace) -> None:
    from crmdata.lake import event_span
    from pipelines.cli import app

    first, last = event_span(ws.lake)
    late, early = last + timedelta(days=30), first - timedelta(days=1)
    for date, expected in (
        (late, f"after the data's end: the lake's last event is {last:%Y-%m-%d}"),
        (early, f"before the data's start: the lake's first event is {first:%Y-%m-%d}"),
    ):
        result = CliRunner().invoke(app, ["score", "churn", "--as-of", f"{date:%Y-%m-%d}"])
        assert result.exit_code == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: --as-of {date:%Y-%m-%d} is {expected}"], result.stderr
