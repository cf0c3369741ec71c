"""The churn-risk job: who is likely to leave in the next W days, and why.

Subscription mode (default when the lake has subscriptions): an active
subscription at the cutoff ends within W days. Transactional mode: a customer
who ordered in the look-back orders nothing within W days. A lake with a
``churn_labels`` table brings its own labels: they replace the derived ones, and
the features are built as of each of its dates.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import polars as pl

from crmdata.contract import CHURN_LABELS
from crmdata.errors import CrmscoreError
from crmdata.lake import read_table
from crmdata.truth import CHURN_FILE, P_CHURN, truth_window_days
from crmdata.workspace import Workspace
from features.labels import brought_labels, churn_labels
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
from training.tasks import CHURN
from training.trainer import BinaryTask, Split, TrainResult, train_binary

log = logging.getLogger(__name__)

Mode = Literal["auto", "subscription", "transactional"]


#: Where derived churn labels come from, per mode (said when there are too few of them).
CHURN_LABEL_SOURCE = {
    "subscription": "churn labels come from subscription end dates",
    "transactional": "churn labels come from orders (a customer who ordered in the year before a cutoff "
                     "and not in the window after it)",
}
BRING_LABELS = f"bring labels in a {CHURN_LABELS.name} table (docs/your-data.md)"


def recency_ticket_rule(frame: pd.DataFrame, mode: str) -> np.ndarray:
    """The rule a CRM team would use without ML: inactivity plus support pain.

    Points: 2 if no login for 30+ days (subscription mode), 1 per support ticket in
    the last 30 days (up to 3), 2 for any complaint in 90 days, 2 for a last NPS of
    6 or below (a detractor), and for order recency 1 point per 30 days since the
    last order (up to 4; the main signal in transactional mode).
    """
    points = (
        np.minimum(column(frame, "tickets_30d"), 3)
        + 2 * (column(frame, "complaints_90d") > 0)
        + 2 * (column(frame, "last_nps", default=np.nan) <= 6)
        + np.minimum(column(frame, "days_since_last_order", default=365).fillna(365) / 30, 4)
    )
    if mode == "subscription":
        points += 2 * (column(frame, "days_since_last_login", default=365).fillna(365) > 30)
    return logistic(points, centre=4, scale=1.5)


def train_churn(ws: Workspace, mode: Mode = "auto", window_days: int = CHURN.window_days, tune: int = 0,
                profile: str = "local", min_positives: int = 200, as_of: datetime | None = None,
                register: bool = True) -> TrainResult:
    """Train, evaluate, register and gate the churn model of a workspace (with only what was
    observable at ``as_of``, when given)."""
    if mode == "auto":
        mode = "subscription" if read_table(ws.lake, "subscriptions", ["customer_id"]) is not None else "transactional"
    if mode == "transactional" and read_table(ws.lake, "orders", ["customer_id"]) is None:
        raise CrmscoreError(f"transactional churn needs the orders table, which {ws.lake} does not have "
                            "(a subscription business: use --mode subscription)")
    # Synthetic worlds simulate subscription churn over one window: the oracle compares only there.
    truth = CHURN_FILE if mode == "subscription" and window_days == truth_window_days(ws.lake, "churn") else None
    started = time.perf_counter()
    labels = brought_labels(ws.lake, CHURN_LABELS.name, window_days=window_days, as_of=as_of)
    split: Split = "time"
    label_table, label_source, advice = None, CHURN_LABEL_SOURCE[mode], BRING_LABELS
    if labels is None:
        cutoffs = choose_cutoffs(ws.lake, window_days, truth, as_of)
        ensure_snapshots(ws, cutoffs)
        labels = churn_labels(ws.lake, cutoffs, window_days=window_days, mode=mode)
    else:
        split, label_table, truth = brought_split(CHURN_LABELS.name, labels), CHURN_LABELS.name, None
        label_source, advice = f"churn labels come from the lake's {CHURN_LABELS.name} table", ""
        ensure_snapshots(ws, label_dates(labels))
    frame = labelled_frame(ws, CHURN.feature_service, labels, profile)
    key = CHURN.key_column
    features = model_features(frame, key)
    categorical = [c for c in features if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    spec = ModelSpec(task=CHURN.key, model_name=CHURN.model_name, feature_service=CHURN.feature_service, entity_key=key,
                     features=features, categories={c: [] for c in categorical},
                     label_window_days=window_days, mode=mode, label_table=label_table)
    task = BinaryTask(spec=spec, segment_column="segment", grading=CHURN.grades,
                      baseline_name="recency/ticket rule", positive_noun="churned customers",
                      negative_noun="retained customers", min_positives=min_positives,
                      label_source=label_source, advice=advice, split=split,
                      min_cutoffs=TIME_SPLIT_DATES if label_table else 4)
    oracle = attach_oracle(frame, ws.lake, truth, key, P_CHURN) if truth else None
    frame_seconds = time.perf_counter() - started
    tags = {"lake": str(ws.lake), "labels": label_table or "derived from events", **as_of_tag(as_of)}
    result = train_binary(task, frame, recency_ticket_rule(frame, mode), oracle, tune_trials=tune,
                          source=ws.feature_tables, extra_tags=tags, register=register)
    result.seconds["frame"] = frame_seconds
    return result


def outcomes(lake: Path, origin: datetime, window_days: int, spec: ModelSpec) -> pl.DataFrame:
    """A backtest fold's evaluation labels: customers at risk at ``origin`` (the model's mode),
    churned in the window after it."""
    return churn_labels(lake, [origin], window_days=window_days, mode=spec.mode)  # type: ignore[arg-type]


def baseline_scores(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    return recency_ticket_rule(frame, spec.mode or "transactional")
