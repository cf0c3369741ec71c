"""The lead-scoring job: which open leads convert in the next W days.

Reps work leads by grade (A–D); the baseline is the classic points-based lead
score of marketing-automation tools. A lake with a ``lead_labels`` table brings
its own labels: they replace the ones derived from ``leads.converted_at``, and the
features are built as of each of its dates.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from crmdata.contract import LEAD_LABELS
from crmdata.errors import CrmscoreError
from crmdata.lake import read_table
from crmdata.truth import LEAD_FILE, P_CONVERT, truth_window_days
from crmdata.workspace import Workspace
from features.labels import brought_labels, lead_conversion_labels
from training.frames import (
    TIME_SPLIT_DATES,
    as_of_tag,
    attach_oracle,
    brought_split,
    choose_cutoffs,
    column,
    ensure_snapshots,
    label_dates,
    labelled_frame,
    logistic,
    model_features,
)
from training.model import ModelSpec
from training.tasks import LEAD
from training.trainer import BinaryTask, Split, TrainResult, train_binary

log = logging.getLogger(__name__)


#: Points per engagement in the last 30 days (capped), as a marketing team would set them.
ENGAGEMENT_POINTS: dict[str, tuple[float, float]] = {
    # feature: (points each, cap)
    "demo_request_30d": (30, 30),
    "meeting_30d": (20, 40),
    "pricing_page_visit_30d": (10, 30),
    "content_download_30d": (5, 15),
    "webinar_30d": (5, 10),
    "email_click_30d": (3, 15),
    "web_visit_30d": (2, 20),
}


def points_rule(frame: pd.DataFrame) -> np.ndarray:
    """Classic lead score: engagement points (capped per type), fit points for seniority
    and company size, minus 10 if the lead went quiet for two weeks."""
    points = pd.Series(0.0, index=frame.index)
    for feature, (each, cap) in ENGAGEMENT_POINTS.items():
        points += np.minimum(column(frame, feature) * each, cap)
    points += 5 * column(frame, "job_seniority_rank") + 3 * column(frame, "company_size_rank")
    points -= 10 * (column(frame, "days_since_last_activity", default=999).fillna(999) > 14)
    return logistic(points, centre=40, scale=15)


def train_lead(ws: Workspace, window_days: int = LEAD.window_days, tune: int = 0, profile: str = "local",
               min_positives: int = 200, as_of: datetime | None = None, register: bool = True) -> TrainResult:
    """Train, evaluate, register and gate the lead-scoring model of a workspace (with only what
    was observable at ``as_of``, when given)."""
    if read_table(ws.lake, "leads", [LEAD.key_column]) is None:
        raise CrmscoreError(f"{ws.lake}: lead scoring needs the leads table, which this lake does not have")
    truth = LEAD_FILE if window_days == truth_window_days(ws.lake, "lead") else None
    started = time.perf_counter()
    labels = brought_labels(ws.lake, LEAD_LABELS.name, window_days=window_days, as_of=as_of)
    split: Split = "time"
    label_table, label_source = None, "lead labels come from leads.converted_at of leads open at the cutoff"
    advice = f"bring labels in a {LEAD_LABELS.name} table (docs/your-data.md)"
    if labels is None:
        cutoffs = choose_cutoffs(ws.lake, window_days, truth, as_of)
        ensure_snapshots(ws, cutoffs)
        labels = lead_conversion_labels(ws.lake, cutoffs, window_days=window_days)
    else:
        split, label_table, truth = brought_split(LEAD_LABELS.name, labels), LEAD_LABELS.name, None
        label_source, advice = f"lead labels come from the lake's {LEAD_LABELS.name} table", ""
        ensure_snapshots(ws, label_dates(labels))
    frame = labelled_frame(ws, LEAD.feature_service, labels, profile)
    key = LEAD.key_column
    features = model_features(frame, key)
    categorical = [c for c in features if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    spec = ModelSpec(task=LEAD.key, model_name=LEAD.model_name, feature_service=LEAD.feature_service, entity_key=key,
                     features=features, categories={c: [] for c in categorical}, label_window_days=window_days,
                     label_table=label_table)
    task = BinaryTask(spec=spec, segment_column="source", grading=LEAD.grades, baseline_name="points-based lead score",
                      positive_noun="converted leads", negative_noun="unconverted leads", min_positives=min_positives,
                      label_source=label_source, advice=advice, split=split,
                      min_cutoffs=TIME_SPLIT_DATES if label_table else 4)
    oracle = attach_oracle(frame, ws.lake, truth, key, P_CONVERT) if truth else None
    frame_seconds = time.perf_counter() - started
    tags = {"lake": str(ws.lake), "labels": label_table or "derived from events", **as_of_tag(as_of)}
    result = train_binary(task, frame, points_rule(frame), oracle, tune_trials=tune,
                          source=ws.feature_tables, extra_tags=tags, register=register)
    result.seconds["frame"] = frame_seconds
    return result


def outcomes(lake: Path, origin: datetime, window_days: int, spec: ModelSpec) -> pl.DataFrame:
    """A backtest fold's evaluation labels: leads open at ``origin``, converted in the window after it."""
    return lead_conversion_labels(lake, [origin], window_days=window_days)


def baseline_scores(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    return points_rule(frame)
