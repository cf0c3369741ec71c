"""The report page in a real browser: Debian's headless chromium, driven by playwright's
Python package (its own browser download is never used: ``executable_path``).

.ci/run installs chromium when it is missing; without it this test fails (it is never
skipped), naming the package to install.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest

from crmdata.workspace import Workspace
from pipelines.report import scores
from pipelines.report.build import build_report, write_report
from pipelines.report.model import SECTIONS
from tests.test_report_lakes import (
    AS_OF,
    MONTHS,
    WINDOW,
    lake_a_tables,
    write_lake,
    write_score_tables,
)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: The issue's goal for opening the page; measured figures are logged (pytest -o log_cli=true) and in docs/report.md.
OPEN_GOAL_MS = 2000


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (.ci/run does this)")
    return path


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = Workspace(tmp_path_factory.mktemp("report_browser"))
    write_lake(ws.lake, lake_a_tables())
    write_score_tables(ws.scores)
    holdout = {"run-lead": scores.ModelRun(holdout_auc=0.9, window_days=60)}
    report = build_report(ws, AS_OF, months=MONTHS, window_days=WINDOW,
                          lookup=lambda run_id: holdout.get(run_id, scores.ModelRun()), threads=1)
    _, _, written = write_report(ws, report)
    return written[0]


def test_report_opens_in_chromium_with_every_chart_and_table(page_file: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            started = time.perf_counter()
            page.goto(page_file.as_uri(), wait_until="load")
            wall_ms = (time.perf_counter() - started) * 1000
            load_ms = page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd")

            assert problems == []
            assert requests == [page_file.as_uri()]  # nothing fetched: the page is self-contained
            sections = page.locator("section.report-section")
            assert sections.count() == len(SECTIONS)
            for key in SECTIONS:
                section = page.locator(f"section#{key}")
                assert section.locator("figure.chart svg").count() == 1, key
                assert section.locator("figure.chart svg").first.is_visible(), key
                assert section.locator("table.data").count() >= 1, key
                assert section.locator("table.data tbody tr").count() >= 1, key
                assert section.locator("dl.definitions dt").count() >= 3, key
            # The flagged run is red on the page.
            flag = page.locator("section#monitor tr.flag td").first
            assert flag.evaluate("td => getComputedStyle(td).color") == "rgb(185, 28, 28)"
            assert page.locator("p.alert").count() == 1
            logging.getLogger(__name__).info("report page: load event %.0f ms, goto %.0f ms (%.0f KiB)",
                                             load_ms, wall_ms, page_file.stat().st_size / 1024)
            assert load_ms < OPEN_GOAL_MS
        finally:
            browser.close()
