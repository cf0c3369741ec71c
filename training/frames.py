"""Data for the binary jobs: which cutoffs, features at those cutoffs, the labelled frame.

Labels come from ``features.labels``; features come from the offline store
through the model's feature service (``features.training.training_frame``).
Feast joins each label row to the newest feature snapshot at or before its
cutoff (within the view's TTL), so the jobs make sure a snapshot exists at every
training cutoff before asking.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.lake import last_event
from crmdata.times import as_utc
from crmdata.truth import read_truth_table
from crmdata.workspace import Workspace
from features.build import add_snapshots, build_features, read_build_summary
from features.catalog import EVENT_TIMESTAMP, NOT_MODEL_INPUTS
from features.grid import snapshot_grid
from features.history import sample_labels

log = logging.getLogger(__name__)

#: Spacing and number of training cutoffs on lakes without a truth grid.
CUTOFF_SPACING = timedelta(days=28)
MAX_CUTOFFS = 12


def choose_cutoffs(lake: Path, window_days: int, truth_file: str | None,
                   as_of: datetime | None = None) -> list[datetime]:
    """Training cutoffs whose whole label window is observed (by ``as_of``, when given).

    A synthetic world has a truth grid (its decision epochs), so the jobs train and
    evaluate exactly there and the oracle can be compared row by row. Other lakes
    get up to MAX_CUTOFFS cutoffs every 28 days, on the feature grid's weekday,
    going back from the newest cutoff whose window fits.

    Training "as of" a date T uses only what was observable at T: a label needs its
    window ``[c, c + W)`` to end by T, and the features of cutoff c only see events
    before c, so no value used depends on an event after T.
    """
    # As of T, T is the end of what is known, even if nothing happened just before it (no
    # order since is an observation too): it must not depend on the lake's last event.
    end = last_event(lake) if as_of is None else as_utc(as_of)
    truth = read_truth_table(lake, truth_file, ["cutoff"]) if truth_file else None
    if truth is not None:
        grid = truth["cutoff"].unique().sort().to_list()
        cutoffs = [as_utc(c) for c in grid if as_utc(c) + timedelta(days=window_days) <= end]
        log.info("training on the %d truth cutoffs of the synthetic world", len(cutoffs))
        return cutoffs
    anchor = snapshot_grid(lake, periods=1, include_truth=False)[0] if as_of is None else as_utc(as_of)
    newest = anchor - timedelta(weeks=int(np.ceil((window_days + 1) / 7)))
    cutoffs = [newest - i * CUTOFF_SPACING for i in range(MAX_CUTOFFS)]
    return sorted(c for c in cutoffs if c + timedelta(days=window_days) <= end)


def as_of_tag(as_of: datetime | None) -> dict[str, str]:
    """The MLflow tag of a run trained as of a past date (none for "everything in the lake")."""
    return {} if as_of is None else {"trained_as_of": f"{as_utc(as_of):%Y-%m-%d}"}


def ensure_snapshots(ws: Workspace, cutoffs: list[datetime]) -> None:
    """Add feature snapshots at the cutoffs that lack one, keeping every existing snapshot
    (so the online store's newest snapshot is unchanged); never built: the default grid
    plus the cutoffs."""
    try:
        read_build_summary(ws.feature_tables)
    except CrmscoreError:
        log.info("no feature tables yet: building the default grid and %d training cutoffs", len(cutoffs))
        build_features(ws.lake, ws.feature_tables, sorted(set(snapshot_grid(ws.lake)) | set(cutoffs)))
        return
    # Training frames keep the history sample (labelled_frame), so a sampled snapshot will do.
    add_snapshots(ws.lake, ws.feature_tables, cutoffs, complete=False)


def labelled_frame(ws: Workspace, service: str, labels: pl.DataFrame, profile: str = "local") -> pd.DataFrame:
    """The point-in-time training frame of ``labels`` through ``service``, for the
    entities of the build's history sample (``features.history``: all of them on a lake
    below its cap), so every row has the features it needs at every snapshot."""
    from feast.errors import FeatureServiceNotFoundException

    from features.store import apply_workspace, feature_store
    from features.training import service_join_keys, training_frame

    store = feature_store(ws, profile)
    try:
        service_def = store.get_feature_service(service)
    except FeatureServiceNotFoundException:  # not applied yet in this workspace: register it now
        apply_workspace(store, ws, profile)
        service_def = store.get_feature_service(service)
    history = read_build_summary(ws.feature_tables).history
    for key in service_join_keys(store, service_def):
        labels = sample_labels(labels, key, history)
    return training_frame(store, service, labels)


def attach_oracle(frame: pd.DataFrame, lake: Path, truth_file: str, key: str, column: str) -> np.ndarray | None:
    """The true probability of each row, or None when the lake has no truth for every row."""
    table = read_truth_table(lake, truth_file, ["cutoff", key, column])
    if table is None:
        return None
    truth = table.to_pandas()
    truth["cutoff"] = pd.to_datetime(truth["cutoff"], utc=True)
    joined = frame[[key, EVENT_TIMESTAMP]].merge(
        truth.rename(columns={"cutoff": EVENT_TIMESTAMP}), on=[key, EVENT_TIMESTAMP], how="left"
    )
    missing = int(joined[column].isna().sum())
    if missing:
        log.warning("no oracle: %d of %d rows have no ground truth", missing, len(joined))
        return None
    return joined[column].to_numpy(dtype=float)


def logistic(points: pd.Series | np.ndarray, centre: float, scale: float) -> np.ndarray:
    """Squash rule points into (0, 1) so the trainer can Platt-calibrate them on validation."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(points, dtype=float) - centre) / scale))


def column(frame: pd.DataFrame, name: str, default: float = 0.0) -> pd.Series:
    """A numeric feature column, or ``default`` when the lake could not compute it."""
    if name not in frame.columns:
        return pd.Series(default, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def model_features(frame: pd.DataFrame, key: str) -> list[str]:
    """The columns of a training frame the model learns from: everything the feature service
    gave except the key, the cutoff, the label, and the catalogue's fields that are served
    but never a model input (e.g. a lead's status, which says who can be scored)."""
    return [c for c in frame.columns if c not in (key, EVENT_TIMESTAMP, "label") and c not in NOT_MODEL_INPUTS]


#: Fewest distinct label dates a time split needs: train, validation and holdout one each.
TIME_SPLIT_DATES = 3


def label_dates(labels: pl.DataFrame) -> list[datetime]:
    """The distinct cutoffs (``event_timestamp``) of a labels frame, oldest first."""
    return [as_utc(d) for d in labels[EVENT_TIMESTAMP].unique().sort().to_list()]


def brought_split(table: str, labels: pl.DataFrame) -> Literal["time", "entity"]:
    """How to split labels you brought, said in the log: by time when they have enough dates
    (a forecast, as for derived labels), else at random by entity (a cross-sectional model)."""
    if labels.height == 0:
        raise CrmscoreError(f"{table}: no labels whose window is observed by the training date")
    dates = label_dates(labels)
    log.info("training on the lake's %s table: %d labels at %d date(s), %s … %s; features as of each date",
             table, labels.height, len(dates), f"{dates[0]:%Y-%m-%d}", f"{dates[-1]:%Y-%m-%d}")
    if len(dates) >= TIME_SPLIT_DATES:
        return "time"
    log.warning("%s has labels at %d date(s), fewer than %d: split at random by entity, stratified by label. "
                "This is a cross-sectional model, not a forecast: its holdout is other entities at the same "
                "date(s), not a later date", table, len(dates), TIME_SPLIT_DATES)
    return "entity"
