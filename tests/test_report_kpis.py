"""Every KPI of the CRM report, exact, on the hand-built lakes of tests/test_report_lakes.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from crmdata.workspace import Workspace
from pipelines.report import scores
from pipelines.report.build import build_report, write_report
from pipelines.report.model import Grid, Report
from pipelines.report.render import render
from serving.report import latest_html, latest_json
from tests.test_report_lakes import (
    AS_OF,
    MONTHS,
    WINDOW,
    frame,
    lake_a_tables,
    lake_b_tables,
    ts,
    write_lake,
    write_score_tables,
)

HOLDOUT = {"run-lead": scores.ModelRun(holdout_auc=0.9, window_days=60, holdout_cutoff=ts(2025, 3, 2))}


def lookup(run_id: str) -> scores.ModelRun:
    return HOLDOUT.get(run_id, scores.ModelRun())


@pytest.fixture(scope="module")
def ws_a(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("report_a"))
    write_lake(ws.lake, lake_a_tables())
    write_score_tables(ws.scores)
    return ws


@pytest.fixture(scope="module")
def report_a(ws_a: Workspace) -> Report:
    return build_report(ws_a, AS_OF, months=MONTHS, window_days=WINDOW, lookup=lookup, threads=1)


@pytest.fixture(scope="module")
def report_b(tmp_path_factory: pytest.TempPathFactory) -> Report:
    ws = Workspace(tmp_path_factory.mktemp("report_b"))
    write_lake(ws.lake, lake_b_tables())
    return build_report(ws, AS_OF, months=MONTHS, window_days=WINDOW, lookup=lookup, threads=1)


def column(rows: list[dict], name: str) -> list:
    return [r[name] for r in rows]


# --- the grid -----------------------------------------------------------------------------------


def test_grid_ends_with_the_month_before_as_of() -> None:
    grid = Grid.build(AS_OF, 6)
    assert grid.labels == ["2025-01", "2025-02", "2025-03", "2025-04", "2025-05", "2025-06"]
    assert grid.ends[-1] == AS_OF and grid.ends[0] == ts(2025, 2, 1)
    # A report as of the middle of a month: that month is the last one, cut at as_of.
    mid = Grid.build(ts(2025, 7, 15), 2)
    assert mid.labels == ["2025-06", "2025-07"] and mid.ends == (ts(2025, 7, 1), ts(2025, 7, 15))


# --- 1. customers (transactional) ------------------------------------------------------------------


def test_customers_per_month_transactional(report_a: Report) -> None:
    """See the spells in tests/test_report_lakes.py. C1 is lost in March and resurrected in April;
    February, April, May and June have no signups; the 2025-07-05 order counts nowhere."""
    rows = report_a.sections["customers"].tables["monthly"]
    assert column(rows, "month") == ["2025-01", "2025-02", "2025-03", "2025-04", "2025-05", "2025-06"]
    assert column(rows, "signups") == [2, 0, 1, 0, 0, 0]
    assert column(rows, "new") == [1, 0, 0, 0, 1, 0]              # C2 in January, C3 in May
    assert column(rows, "returning") == [1, 1, 1, 0, 0, 1]        # C1 Jan; C2 Feb, Mar; C3 Jun
    assert column(rows, "resurrected") == [0, 0, 0, 1, 0, 0]      # C1 back in April
    assert column(rows, "dormant") == [0, 1, 0, 1, 1, 0]          # C1 Feb; C2 Apr; C1 May
    assert column(rows, "lost") == [1, 0, 1, 0, 1, 1]             # C5, C1, C2, C1
    assert column(rows, "active_at_start") == [2, 2, 2, 1, 2, 2]
    assert column(rows, "active_at_end") == [2, 2, 1, 2, 2, 1]
    assert column(rows, "churn_rate") == [0.5, 0.0, 0.5, 0.0, 0.5, 0.5]
    for r in rows:  # the balance the definitions promise
        assert r["active_at_end"] == r["active_at_start"] + r["new"] + r["resurrected"] - r["lost"]
    assert report_a.mode == "transactional"
    assert report_a.sections["customers"].summary["active_customers"] == 1


def test_retention_matrix(report_a: Report) -> None:
    """Cohorts: C2 (January; active to May 14) and C3 (May; still active). Months with no new
    customer have size 0 and no shares; cells after the report date are null."""
    rows = {r["month"]: r for r in report_a.sections["customers"].tables["retention"]}
    assert [rows[m]["customers"] for m in sorted(rows)] == [1, 0, 0, 0, 1, 0]
    jan = rows["2025-01"]
    assert [jan[f"m{k}"] for k in range(6)] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    may = rows["2025-05"]
    assert [may[f"m{k}"] for k in range(6)] == [1.0, 1.0, None, None, None, None]
    assert rows["2025-02"]["m0"] is None


# --- 1. customers (subscription) -------------------------------------------------------------------


def test_customers_per_month_subscription(report_b: Report) -> None:
    """D1's plan change (S1 ends as S2 starts) is one spell; D2 is lost in March and back in May;
    churn rate = subscriptions ended ÷ active at the month's start: S1 in Feb (of 2), S3 in Mar (of 3)."""
    section = report_b.sections["customers"]
    rows = section.tables["monthly"]
    assert report_b.mode == "subscription"
    assert column(rows, "subscriptions_active_at_start") == [1, 2, 3, 2, 2, 3]
    assert column(rows, "subscriptions_ended") == [0, 1, 1, 0, 0, 0]
    assert column(rows, "churn_rate") == [0.0, 0.5, 1 / 3, 0.0, 0.0, 0.0]
    assert column(rows, "new") == [1, 1, 0, 0, 0, 0]
    assert column(rows, "resurrected") == [0, 0, 0, 0, 1, 0]
    assert column(rows, "lost") == [0, 0, 1, 0, 0, 0]
    assert column(rows, "active_at_start") == [1, 2, 3, 2, 2, 3]
    assert column(rows, "active_at_end") == [2, 3, 2, 2, 3, 3]
    assert column(rows, "customer_churn_rate") == [0.0, 0.0, 1 / 3, 0.0, 0.0, 0.0]
    assert column(rows, "returning") == [1, 2, 2, 2, 2, 3]
    # January: D1 logged in, D2 only got an email (outbound): D2 is dormant.
    assert column(rows, "dormant") == [1, 3, 2, 2, 3, 3]


def test_value_in_subscription_mode_without_orders(report_b: Report) -> None:
    section = report_b.sections["value"]
    assert column(section.tables["monthly"], "mrr_at_end") == [40.0, 100.0, 70.0, 70.0, 110.0, 110.0]
    assert any("no orders table" in n for n in section.notes)
    assert any("no customer-value scores" in n for n in section.notes)


# --- 2. value -----------------------------------------------------------------------------------


def test_value_per_month(report_a: Report) -> None:
    rows = report_a.sections["value"].tables["monthly"]
    assert column(rows, "revenue") == [70.0, 30.0, 40.0, 80.0, 10.0, 60.0]
    assert column(rows, "orders") == [2, 1, 1, 1, 1, 1]
    assert column(rows, "buyers") == [2, 1, 1, 1, 1, 1]
    assert column(rows, "aov") == [35.0, 30.0, 40.0, 80.0, 10.0, 60.0]
    assert column(rows, "revenue_per_active") == [35.0, 15.0, 40.0, 40.0, 5.0, 60.0]
    summary = report_a.sections["value"].summary
    assert summary["revenue"] == 290.0 and summary["orders"] == 7 and summary["aov"] == pytest.approx(290 / 7)


def test_clv_tiers_and_migration(report_a: Report) -> None:
    """June run: C2 A (was B: upgraded), C1 B (was A: downgraded), C3 C (same), C4 D (new); C5 lost."""
    section = report_a.sections["value"]
    tiers = {r["tier"]: r for r in section.tables["tiers"]}
    assert {t: tiers[t]["customers"] for t in "ABCD"} == {"A": 1, "B": 1, "C": 1, "D": 1}
    assert {t: tiers[t]["clv"] for t in "ABCD"} == {"A": 300.0, "B": 100.0, "C": 50.0, "D": 10.0}
    assert section.summary["clv_total"] == 460.0
    assert section.summary["clv_low_total"] == pytest.approx(368.0)
    assert section.summary["clv_high_total"] == pytest.approx(552.0)
    matrix = {r["from"]: r for r in section.tables["migration"]}
    assert matrix["A"] == {"from": "A", "A": 0, "B": 1, "C": 0, "D": 0, "lost": 0}
    assert matrix["B"] == {"from": "B", "A": 1, "B": 0, "C": 0, "D": 0, "lost": 0}
    assert matrix["C"]["C"] == 1 and matrix["D"]["lost"] == 1 and matrix["new"]["D"] == 1
    assert {k: section.summary[k] for k in ("upgraded", "downgraded", "same", "new", "lost")} == {
        "upgraded": 1, "downgraded": 1, "same": 1, "new": 1, "lost": 1}


def test_clv_deciles_predicted_vs_realized(ws_a: Workspace) -> None:
    """The May run with a 30-day horizon: realized = orders in [May 1, May 31): C3's 10.
    Deciles of 4 customers by predicted CLV: C1 → 1, C2 → 3, C3 → 6, C5 → 8."""
    runs = scores.dated_partitions(ws_a.scores, "clv", ts(2025, 5, 1))
    rows = scores.clv_deciles(ws_a, runs, Grid.build(AS_OF, MONTHS), horizon=30)
    assert rows is not None
    assert [(r["decile"], r["customers"], r["predicted_mean"], r["realized_mean"]) for r in rows] == [
        (1, 1, 200.0, 0.0), (3, 1, 100.0, 0.0), (6, 1, 50.0, 10.0), (8, 1, 20.0, 0.0)]
    assert scores.clv_deciles(ws_a, runs, Grid.build(AS_OF, MONTHS), horizon=365) is None


# --- 3. funnel ----------------------------------------------------------------------------------


def test_funnel_stages(report_a: Report) -> None:
    """Leads created Jan–Jun: L1 L2 L3 L4 L5 L8 L9. Engaged: L1 L2 L4 (activities) + L3 L8
    (converted without any recorded activity); L5's activity and conversion come after the
    report date, so it is open."""
    stages = {r["stage"]: r for r in report_a.sections["funnel"].tables["stages"]}
    assert [stages[s]["leads"] for s in ("created", "engaged", "demo_requested", "meeting", "converted", "lost")] == [
        7, 5, 4, 3, 3, 2]
    assert [stages[s]["next_step_conversion"] for s in ("engaged", "demo_requested", "meeting", "converted")] == [
        5 / 7, 0.8, 0.75, 1.0]
    assert [stages[s]["cumulative_conversion"] for s in ("engaged", "demo_requested", "meeting", "converted")] == [
        5 / 7, 4 / 7, 3 / 7, 3 / 7]
    summary = report_a.sections["funnel"].summary
    assert summary["open"] == 2 and summary["lost"] == 2
    assert summary["median_days_to_convert"] == 30.0  # L3 10, L1 30, L8 38


def test_funnel_by_source(report_a: Report) -> None:
    rows = {r["source"]: r for r in report_a.sections["funnel"].tables["by_source"]}
    keys = ("created", "engaged", "demo_requested", "meeting", "converted", "lost", "open")
    assert {k: rows["web"][k] for k in keys} == dict(zip(keys, (4, 2, 1, 1, 1, 2, 1), strict=True))
    assert {k: rows["event"][k] for k in keys} == dict(zip(keys, (3, 3, 3, 2, 2, 0, 1), strict=True))
    assert rows["web"]["median_days_to_convert"] == 30.0
    assert rows["event"]["median_days_to_convert"] == 24.0
    assert rows["web"]["cumulative_conversion"] == 0.25


def test_funnel_monthly_and_open_leads_by_grade(report_a: Report) -> None:
    """Open at the report date: L4, L5 (converts after it) and L7 (created before the months).
    Graded by the newest lead run at or before the report (2025-06-20): L4 A, L7 C; L5 unscored."""
    funnel = report_a.sections["funnel"]
    monthly = funnel.tables["monthly_cohorts"]
    assert column(monthly, "created") == [1, 3, 1, 0, 0, 2]
    assert column(monthly, "converted") == [1, 1, 1, 0, 0, 0]
    grades = {r["grade"]: r["open_leads"] for r in funnel.tables["open_by_grade"]}
    assert grades == {"A": 1, "B": 0, "C": 1, "D": 0, "unscored": 1}
    assert funnel.summary["grades_from"] == "2025-06-20"


# --- 4. satisfaction -----------------------------------------------------------------------------


def test_nps_and_csat_with_a_survey_answered_twice(report_a: Report) -> None:
    """January NPS: C1 8 (passive), C2 6 then 9 (twice: the later 9 counts) → 2 responses of 3
    answers, 1 promoter, 1 passive → NPS 50. February: 3 (D), 7 (Pa), 10 (P) → 0. March: none.
    CSAT January: 5 and 2 → 50 %; February: C1's 4 and 3 at the same instant → the 4 → 100 %."""
    rows = {r["month"]: r for r in report_a.sections["satisfaction"].tables["monthly"]}
    jan, feb, mar = rows["2025-01"], rows["2025-02"], rows["2025-03"]
    assert (jan["nps_answers"], jan["nps_responses"], jan["promoters"], jan["passives"], jan["detractors"]) == (
        3, 2, 1, 1, 0)
    assert jan["nps"] == 50.0
    assert (feb["nps_responses"], feb["promoters"], feb["passives"], feb["detractors"], feb["nps"]) == (
        3, 1, 1, 1, 0.0)
    assert mar["nps_responses"] == 0 and mar["nps"] is None and mar["csat"] is None
    assert (jan["csat_answers"], jan["csat_responses"], jan["csat_satisfied"], jan["csat"], jan["csat_mean"]) == (
        2, 1 + 1, 1, 50.0, 3.5)
    assert (feb["csat_answers"], feb["csat_responses"], feb["csat"], feb["csat_mean"]) == (2, 1, 100.0, 4.0)
    window = report_a.sections["satisfaction"].tables["window"][0]
    assert (window["nps_responses"], window["promoters"], window["detractors"]) == (5, 2, 1)
    assert window["nps"] == 20.0
    assert window["csat"] == pytest.approx(200 / 3) and window["csat_mean"] == pytest.approx(11 / 3)


# --- 5. monitor ---------------------------------------------------------------------------------


def test_monitor_judges_matured_runs_and_flags(report_a: Report) -> None:
    """2025-03-01: open leads L2 L7 L8 L9, L8 converts (Mar 20) → AUC 1.0, A's lift 1.0/0.25 = 4.
    2025-03-02: L3 L7 L8 L9, L3 and L8 convert but scored lowest → AUC 0 < 0.9 − 0.05: flagged.
    2025-06-20's window ends after the report date: waiting. 2025-07-02 is after it: ignored."""
    monitor = report_a.sections["monitor"]
    runs = {r["as_of"]: r for r in monitor.tables["runs"]}
    assert set(runs) == {"2025-03-01", "2025-03-02"}
    first, second = runs["2025-03-01"], runs["2025-03-02"]
    assert (first["judged"], first["positives"], first["observed_rate"]) == (4, 1, 0.25)
    assert first["realized_auc"] == 1.0 and first["holdout_auc"] == 0.9 and not first["flagged"]
    assert first["top_grade"] == "A" and first["top_lift"] == 4.0
    assert second["realized_auc"] == 0.0 and second["flagged"] and second["top_lift"] == 0.0
    # The model's holdout starts 2025-03-02: the run of the day before is judged in-sample.
    assert (first["in_sample"], second["in_sample"]) == (True, False)
    grades = [(g["grade"], g["n"], g["predicted_mean"], g["observed_rate"])
              for g in monitor.tables["grades"] if g["as_of"] == "2025-03-01"]
    assert grades == [("A", 1, 0.7, 1.0), ("B", 2, pytest.approx(0.45), 0.0), ("C", 1, 0.2, 0.0),
                      ("D", 0, None, None)]
    assert [(p["as_of"], p["matures"]) for p in monitor.tables["pending"]] == [("2025-06-20", "2025-08-19")]
    assert [(a.task, a.as_of, a.realized_auc, a.holdout_auc) for a in report_a.alerts] == [
        ("lead", "2025-03-02", 0.0, 0.9)]
    assert monitor.summary == {"runs_judged": 2, "runs_waiting": 1, "flagged": 1, "mean_realized_auc": 0.5}


def test_holdout_cutoff_as_mlflow_keeps_it() -> None:
    """trainer.py logs str() of a pandas Timestamp."""
    assert scores._parse_time("2025-09-29 00:00:00+00:00") == ts(2025, 9, 29)
    assert scores._parse_time("not a date") is None and scores._parse_time(None) is None


def test_monitor_without_holdout_does_not_flag(ws_a: Workspace) -> None:
    section, alerts = scores.monitor_section(ws_a, Grid.build(AS_OF, MONTHS), lambda run_id: scores.ModelRun())
    assert alerts == [] and not any(r["flagged"] for r in section.tables["runs"])
    assert any("holdout AUC is unknown" in n for n in section.notes)


# --- empty and missing tables --------------------------------------------------------------------


def test_missing_optional_tables_say_what_is_missing(tmp_path: Path) -> None:
    """Lake A without leads, lead activities and interactions; no score tables at all."""
    ws = Workspace(tmp_path)
    tables = {k: v for k, v in lake_a_tables().items() if k in ("customers", "orders")}
    write_lake(ws.lake, tables)
    report = build_report(ws, AS_OF, months=MONTHS, window_days=WINDOW, lookup=lookup, threads=1)
    assert not report.sections["funnel"].available
    assert report.sections["funnel"].notes == ["the lake has no leads table: no funnel"]
    assert not report.sections["satisfaction"].available
    assert report.sections["satisfaction"].notes == ["the lake has no interactions table: no survey answers"]
    assert any("no customer-value scores" in n for n in report.sections["value"].notes)
    assert report.sections["monitor"].notes[0].startswith("no past scoring run has a matured label window")
    # The customers section does not depend on them.
    assert column(report.sections["customers"].tables["monthly"], "lost") == [1, 0, 1, 0, 1, 1]
    page = render(report)
    assert "the lake has no leads table: no funnel" in page


def test_empty_optional_tables(tmp_path: Path) -> None:
    """Present but empty interactions and lead_activities: zero counts, no NPS, and a note."""
    ws = Workspace(tmp_path)
    tables = lake_a_tables()
    tables["interactions"] = frame("interactions", [])
    tables["lead_activities"] = frame("lead_activities", [])
    write_lake(ws.lake, tables)
    report = build_report(ws, AS_OF, months=MONTHS, window_days=WINDOW, lookup=lookup, threads=1)
    satisfaction = report.sections["satisfaction"]
    assert satisfaction.notes == ["no nps or csat answers in the report's months"]
    assert column(satisfaction.tables["monthly"], "nps_responses") == [0] * 6
    assert column(satisfaction.tables["monthly"], "nps") == [None] * 6
    stages = {r["stage"]: r["leads"] for r in report.sections["funnel"].tables["stages"]}
    # Without activities only conversions prove the earlier stages.
    assert (stages["engaged"], stages["demo_requested"], stages["meeting"], stages["converted"]) == (3, 3, 3, 3)


# --- output ---------------------------------------------------------------------------------------


def test_write_report_is_atomic_and_json_matches(ws_a: Workspace, report_a: Report, tmp_path: Path) -> None:
    out = tmp_path / "out" / "crm.html"
    page, _data, written = write_report(ws_a, report_a, out)
    assert written == [latest_html(ws_a), latest_json(ws_a), out, out.with_suffix(".json")]
    assert latest_html(ws_a).read_text() == out.read_text() == page
    parsed = json.loads(latest_json(ws_a).read_text())
    assert parsed["alerts"][0]["as_of"] == "2025-03-02"
    assert parsed["sections"]["customers"]["tables"]["monthly"][0]["lost"] == 1
    assert not list(latest_html(ws_a).parent.glob(".*.tmp"))  # no temporary file left behind
    # Self-contained: no script, no external reference; the flagged run's row is red.
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page
    assert '<tr class="flag">' in page
    assert page.count('<section class="report-section"') == 5
    assert page.count("<svg") == 5


def test_definitions_on_the_page(report_a: Report) -> None:
    page = render(report_a)
    for section in report_a.sections.values():
        assert section.definitions
        for term in section.definitions:
            assert f"<dt>{term}</dt>" in page.replace("&#x27;", "'")


def test_as_of_before_the_data_is_an_error(ws_a: Workspace) -> None:
    from crmdata.errors import CrmscoreError

    with pytest.raises(CrmscoreError, match="before the data's start"):
        build_report(ws_a, ts(2020, 1, 1), lookup=lookup)


@pytest.fixture()
def mlflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    yield tmp_path


def test_cli_writes_page_json_and_logs_to_mlflow(ws_a: Workspace, mlflow_home: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = mlflow_home / "page.html"
    result = CliRunner().invoke(app, ["--home", str(ws_a.home), "report", "--as-of", "2025-07-01", "--months", "6",
                                      "--window", "60", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["months"][0] == "2025-01" and data["window_days"] == 60
    assert out.exists() and out.with_suffix(".json").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_home / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("crm-report")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.params["as_of"] == "2025-07-01"
    assert runs[0].data.metrics["customers.active_customers"] == 1.0
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert names == {"report.html", "report.json"}


def test_cli_bad_date_is_one_line(ws_a: Workspace) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["--home", str(ws_a.home), "report", "--as-of", "July", "--no-mlflow"])
    assert result.exit_code == 1
    assert "--as-of 'July': expected a date as YYYY-MM-DD" in result.output



def test_default_as_of_takes_a_scoring_run_dated_just_after_the_last_event(tmp_path: Path) -> None:
    """Lake B's last event is S5's end, 2025-08-01: the default is 2025-08-02, unless a scoring
    run is dated within a week after the last event (the Monday snapshot), here 2025-08-04."""
    from pipelines.report.build import default_as_of
    from tests.test_report_lakes import lead_scores, write_scores

    ws = Workspace(tmp_path)
    write_lake(ws.lake, lake_b_tables())
    assert default_as_of(ws.lake, ws.scores) == ts(2025, 8, 2)
    write_scores(ws.scores, "lead", ts(2025, 8, 20), lead_scores([("L1", 0.5, "A")]))
    assert default_as_of(ws.lake, ws.scores) == ts(2025, 8, 2)
    write_scores(ws.scores, "churn", ts(2025, 8, 4), lead_scores([("L1", 0.5, "A")]))
    assert default_as_of(ws.lake, ws.scores) == ts(2025, 8, 4)
