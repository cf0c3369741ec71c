"""The pipeline's ordering and resumability, with stand-in steps (the real ones are tested on their own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmdata.workspace import Workspace
from pipelines.pipeline import Context, Source, run_pipeline

SOURCE = Source(world_customers=100)


def steps(calls: list[str], fail_at: str | None = None) -> tuple:
    def make(name: str):
        def step(ctx: Context) -> str:
            if name == fail_at:
                raise RuntimeError(f"{name} broke")
            calls.append(name)
            return f"{name} done"
        return (name, step)
    return tuple(make(n) for n in ("lake", "validate", "features", "train"))


def test_runs_in_order_then_skips_finished_steps(tmp_path: Path) -> None:
    ws, calls = Workspace(tmp_path), []
    first = run_pipeline(ws, SOURCE, steps=steps(calls))
    assert calls == ["lake", "validate", "features", "train"]
    assert [r.status for r in first] == ["ran"] * 4
    second = run_pipeline(ws, SOURCE, steps=steps(calls))
    assert calls == ["lake", "validate", "features", "train"]  # nothing ran again
    assert [r.status for r in second] == ["skipped"] * 4
    run_pipeline(ws, SOURCE, steps=steps(calls), force=True)
    assert calls[4:] == ["lake", "validate", "features", "train"]


def test_resumes_at_the_step_that_failed(tmp_path: Path) -> None:
    ws, calls = Workspace(tmp_path), []
    with pytest.raises(RuntimeError, match="features broke"):
        run_pipeline(ws, SOURCE, steps=steps(calls, fail_at="features"))
    assert calls == ["lake", "validate"]
    records = run_pipeline(ws, SOURCE, steps=steps(calls))
    assert calls == ["lake", "validate", "features", "train"]
    assert [r.status for r in records] == ["skipped", "skipped", "ran", "ran"]


def test_a_new_source_reruns_everything(tmp_path: Path) -> None:
    ws, calls = Workspace(tmp_path), []
    run_pipeline(ws, SOURCE, steps=steps(calls))
    run_pipeline(ws, Source(world_customers=200), steps=steps(calls))
    assert calls == ["lake", "validate", "features", "train"] * 2
