"""The end-to-end pipeline: from raw data (or a synthetic world) to served scores.

Each step is a library call; the pipeline only orders them, times them and
remembers which finished (``HOME/pipeline.json``, written atomically), so a rerun
resumes after the last finished step. ``force`` reruns everything; a step that
reruns makes every later step rerun too, since its inputs changed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from crmdata.importer import import_lake
from crmdata.lake import atomic_dir, scan_table
from crmdata.synth import WorldConfig, generate_world
from crmdata.validate import validate_lake
from crmdata.workspace import Workspace
from features.build import build_features
from features.catalog import SCORE_VIEW_NAMES
from features.grid import snapshot_grid
from features.materialize import materialize_latest
from features.store import apply_workspace, feature_store
from pipelines.scoring.job import score_all
from pipelines.scoring.publish import publish_all
from pipelines.scoring.table import partitions
from pipelines.scoring.types import ScoreOptions, Skipped
from pipelines.train import train_task
from training.tasks import TASKS, Task

log = logging.getLogger(__name__)

STATE_FILE = "pipeline.json"


class Source(BaseModel):
    """Where the lake comes from: a synthetic world, an existing lake, or an import mapping."""

    world_customers: int | None = None
    seed: int = 1
    lake: Path | None = None
    mapping: Path | None = None

    def describe(self) -> str:
        if self.world_customers:
            return f"synthetic world of {self.world_customers} customers (seed {self.seed})"
        return f"lake {self.lake}" if self.lake else f"import {self.mapping}"


class StepRecord(BaseModel):
    name: str
    status: str  # ran | skipped (already done) | not applicable
    seconds: float
    detail: str = ""
    #: The process's peak resident memory so far (GB) when the step ended: where it rose
    #: is the step that needed it.
    peak_rss_gb: float | None = None
    #: CPU seconds the step used (all threads): on a shared machine, the work it cost.
    cpu_seconds: float | None = None
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class PipelineState(BaseModel):
    source: str = ""
    done: dict[str, StepRecord] = Field(default_factory=dict)


@dataclass
class Context:
    ws: Workspace
    source: Source
    profile: str


StepFn = Callable[[Context], str]


def _lake(ctx: Context) -> str:
    src = ctx.source
    if src.world_customers:
        generate_world(WorldConfig(customers=src.world_customers, leads=src.world_customers // 2, seed=src.seed),
                       ctx.ws.lake)
        return src.describe()
    if src.mapping:
        import_lake(src.mapping, ctx.ws.lake)
        return src.describe()
    if src.lake:
        if not src.lake.is_dir():
            raise CrmscoreError(f"--lake {src.lake}: no such directory")
        if src.lake.resolve() != ctx.ws.lake.resolve():
            with atomic_dir(ctx.ws.lake) as tmp:
                shutil.copytree(src.lake, tmp, dirs_exist_ok=True)
        return src.describe()
    raise CrmscoreError("the pipeline needs a source: --world N, --lake DIR or --mapping FILE")


def _validate(ctx: Context) -> str:
    problems = validate_lake(ctx.ws.lake)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        listing = "; ".join(str(p) for p in errors[:5])
        raise CrmscoreError(f"the lake breaks {len(errors)} contract rules: {listing}")
    return f"valid ({len(problems)} warnings)"


def _features(ctx: Context) -> str:
    summary = build_features(ctx.ws.lake, ctx.ws.feature_tables, snapshot_grid(ctx.ws.lake))
    return f"{len(summary.as_of)} snapshots, " + ", ".join(
        f"{name} {e.rows:,} rows" for name, e in summary.entities.items())


def _apply(ctx: Context) -> str:
    summary = apply_workspace(feature_store(ctx.ws, ctx.profile), ctx.ws, ctx.profile)
    return (f"{len(summary.feature_views)} views, {len(summary.feature_services)} services; "
            f"Feast CLI config {summary.feast_config}")


def _materialize(ctx: Context) -> str:
    summary = materialize_latest(feature_store(ctx.ws, ctx.profile), ctx.ws.feature_tables)
    return f"snapshot {summary.snapshot:%Y-%m-%d}, " + ", ".join(f"{k} {v:,}" for k, v in summary.rows.items())


def _train_step(task: Task) -> StepFn:
    def step(ctx: Context) -> str:
        missing = [t for t in task.needs if scan_table(ctx.ws.lake, t) is None]
        if missing:
            return f"not applicable: the lake has no {', '.join(missing)}"
        result = train_task(ctx.ws, task, profile=ctx.profile)
        return f"{result.model} v{result.version} ({result.alias}): {result.reason}"

    return step


def _score_all(ctx: Context) -> str:
    runs = score_all(ctx.ws, options=ScoreOptions(profile=ctx.profile))
    return "; ".join(
        f"{r.task} not applicable: {r.reason}" if isinstance(r, Skipped)
        else f"{r.task} {r.rows:,} rows v{r.model_version} in {r.seconds:.1f}s" for r in runs
    )


def _push_scores(ctx: Context) -> str:
    scored = [t for t in TASKS if partitions(ctx.ws.scores, t)]
    # A task whose scores have no online view yet is published by `push-scores --to-postgres` only.
    tasks = [t for t in scored if t in SCORE_VIEW_NAMES]
    if not tasks:
        return "not applicable: nothing was scored"
    done = publish_all(ctx.ws, tasks, online=True, profile=ctx.profile)
    without = [t for t in scored if t not in SCORE_VIEW_NAMES]
    return (", ".join(f"{p.task} {p.rows:,} rows" for p in done) + " into the online store"
            + (f" ({', '.join(without)}: no online score view)" if without else ""))


STEPS: tuple[tuple[str, StepFn], ...] = (
    ("lake", _lake),
    ("validate", _validate),
    ("features", _features),
    ("apply", _apply),
    ("materialize", _materialize),
    *((f"train {task.key}", _train_step(task)) for task in TASKS.values()),
    ("score all", _score_all),
    ("push scores", _push_scores),
)


def _peak_rss_gb() -> float:
    import resource

    # Linux reports ru_maxrss in KiB.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _read_state(path: Path) -> PipelineState:
    if not path.exists():
        return PipelineState()
    try:
        return PipelineState.model_validate_json(path.read_text())
    except ValueError:
        log.warning("%s is unreadable; starting the pipeline from the first step", path)
        return PipelineState()


def _write_state(path: Path, state: PipelineState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    os.replace(tmp, path)


def run_pipeline(ws: Workspace, source: Source, *, force: bool = False, profile: str = "local",
                 steps: tuple[tuple[str, StepFn], ...] = STEPS,
                 on_step: Callable[[StepRecord], None] | None = None) -> list[StepRecord]:
    """Run every step in order, skipping those already done (unless ``force``)."""
    state_path = ws.home / STATE_FILE
    state = PipelineState() if force else _read_state(state_path)
    if state.source and state.source != source.describe():
        log.info("the source changed (%s → %s): running every step", state.source, source.describe())
        state = PipelineState()
    state.source = source.describe()
    ctx = Context(ws=ws, source=source, profile=profile)
    records: list[StepRecord] = []
    rerun_rest = False
    for name, fn in steps:
        if name in state.done and not rerun_rest:
            record = StepRecord(name=name, status="skipped", seconds=0.0,
                                detail=f"done {state.done[name].finished_at:%Y-%m-%d %H:%M} UTC")
        else:
            rerun_rest = True
            started, cpu = time.perf_counter(), time.process_time()
            log.info("pipeline step %s …", name)
            detail = fn(ctx)
            status = "not applicable" if detail.startswith("not applicable") else "ran"
            record = StepRecord(name=name, status=status, seconds=round(time.perf_counter() - started, 2),
                                detail=detail, peak_rss_gb=_peak_rss_gb(),
                                cpu_seconds=round(time.process_time() - cpu, 1))
            state.done[name] = record
            _write_state(state_path, state)
        records.append(record)
        if on_step:
            on_step(record)
    return records


def records_json(records: list[StepRecord]) -> str:
    return json.dumps([r.model_dump(mode="json") for r in records], indent=2)
