"""A scoring model as serving and batch jobs use it: booster + calibrator + grading + spec.

``load_model`` is the one call that loads a registered version (by alias or
number). Everything comes from the registry's own artifacts: the booster in
LightGBM's native text format and the rest as plain JSON — nothing is unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from crmdata.errors import CrmscoreError
from training.calibration import Calibrator, Grading, score_1_99
from training.encoding import Encoder, top_reasons
from training.explain import explainer_for
from training.registry import CHAMPION

log = logging.getLogger(__name__)

#: Where the JSON companions of the booster live inside the logged model directory.
SPEC_FILE, CALIBRATOR_FILE, GRADING_FILE = "spec.json", "calibrator.json", "grading.json"
BOOSTER_FILE = "model.lgb"


class ModelSpec(BaseModel):
    """What a booster needs from the outside world to score a row."""

    #: the key of its task in training/tasks.py
    task: str
    model_name: str
    feature_service: str
    entity_key: str
    features: list[str]
    #: categorical feature -> its categories in code order (from the training rows)
    categories: dict[str, list[str]] = {}
    label_window_days: int
    mode: str | None = None
    #: The label table it was trained on (churn_labels, lead_labels); None: labels derived from events.
    label_table: str | None = None


def prepare_features(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The booster's input as a frame: the spec's features in order, all numeric.

    A frame (not the bare matrix) because training hands LightGBM the column names,
    and the categoricals by name. The encoding itself is ``Encoder``'s, the one the
    service and batch scoring use.
    """
    return pd.DataFrame(Encoder.of(spec).frame(frame), index=frame.index, columns=spec.features)


def fit_categories(frame: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """The sorted distinct values of each categorical column (nulls excluded)."""
    return {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in columns}


@dataclass
class Reason:
    feature: str
    value: object
    impact: float


def reason_lists(contrib: np.ndarray, features: list[str], value: Callable[[int, int], object],
                 top: int) -> list[dict[str, list[Reason]]]:
    """``{"up": [...], "down": [...]}`` per row, as ``top_reasons`` picks them;
    ``value(j, i)`` is feature j's value in row i, as the caller wants it shown."""
    return [
        {"up": [Reason(features[j], value(j, i), float(contrib[i, j])) for j in up],
         "down": [Reason(features[j], value(j, i), float(contrib[i, j])) for j in down]}
        for i, (up, down) in enumerate(top_reasons(contrib, top).rows())
    ]


@dataclass
class ScoringModel:
    """A registered version, ready to score."""

    name: str
    version: str
    alias: str | None
    run_id: str | None
    booster: lgb.Booster
    calibrator: Calibrator
    grading: Grading
    spec: ModelSpec

    @cached_property
    def encoder(self) -> Encoder:
        return Encoder.of(self.spec)

    def raw_scores(self, x: np.ndarray | pd.DataFrame) -> np.ndarray:
        return np.asarray(self.booster.predict(x, num_threads=1), dtype=float)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities for rows of a feature frame."""
        return self.calibrator.apply(self.raw_scores(self.encoder.frame(frame)))

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """probability, score 1–99 and grade/band for each row."""
        p = self.predict_proba(frame)
        return pd.DataFrame(
            {"probability": p, "score": score_1_99(p), "grade": self.grading.assign(p)}, index=frame.index
        )

    def contributions(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """Exact per-feature contributions to the raw margin (log-odds), rows × features (no bias column),
        for the booster input ``x`` (already encoded): LightGBM's ``pred_contrib`` values, from the
        booster's precomputed ``TreeExplainer`` (built on the first call, then kept)."""
        return explainer_for(self.booster).contributions(x, threads)[:, :-1]

    def reasons(self, frame: pd.DataFrame, top: int = 3) -> list[dict[str, list[Reason]]]:
        """The top features pushing each score up and down (exact TreeSHAP, in log-odds).

        The contributions sum, with the bias term, to the raw margin; TreeSHAP is
        exact for trees, so no sampling.
        """
        x = self.encoder.frame(frame)
        contrib = self.contributions(x)
        values = frame[self.spec.features].to_numpy(dtype=object)
        return reason_lists(contrib, self.spec.features, lambda j, i: _plain(values[i, j]), top)


def _plain(value: object) -> object:
    """A JSON-friendly feature value (NaN → None, numpy scalars → Python)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


def save_model_files(directory: Path, booster: lgb.Booster, calibrator: Calibrator, grading: Grading,
                     spec: ModelSpec) -> list[Path]:
    """Write the JSON companions (the booster itself is logged by mlflow.lightgbm)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {SPEC_FILE: spec, CALIBRATOR_FILE: calibrator, GRADING_FILE: grading}
    paths = []
    for name, obj in files.items():
        path = directory / name
        path.write_text(obj.model_dump_json(indent=2))
        paths.append(path)
    return paths


def load_model(name: str, alias: str | None = CHAMPION, version: str | None = None,
               client: MlflowClient | None = None) -> ScoringModel:
    """Load a registered version by alias (default champion) or by number."""
    from training.registry import configure_mlflow, download_version

    local, mv = download_version(name, alias, version, client or configure_mlflow())
    model = _from_files(local, name, str(mv.version), alias if not version else None, mv.run_id,
                        f"{name} version {mv.version}")
    log.info("loaded %s version %s (%s)", name, model.version, alias or "by number")
    return model


def load_run_model(run_id: str) -> ScoringModel:
    """The model a training run logged, registered or not (a backtest fold's)."""
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model"))
    except MlflowException as exc:
        raise CrmscoreError(f"training run {run_id} has no logged model ({exc.message.splitlines()[0]})") from None
    model = _from_files(local, "", "", None, run_id, f"training run {run_id}")
    model.name = model.spec.model_name
    return model


def _from_files(local: Path, name: str, version: str, alias: str | None, run_id: str | None,
                what: str) -> ScoringModel:
    booster_path = next(local.rglob(BOOSTER_FILE), None)
    if booster_path is None:
        raise CrmscoreError(f"{what}: no {BOOSTER_FILE} in its artifacts")

    def companion(file: str) -> str:
        found = next(local.rglob(file), None)
        if found is None:
            raise CrmscoreError(f"{what}: no {file} in its artifacts")
        return found.read_text()

    return ScoringModel(
        name=name,
        version=version,
        alias=alias,
        run_id=run_id,
        booster=lgb.Booster(model_file=str(booster_path)),
        calibrator=Calibrator.model_validate_json(companion(CALIBRATOR_FILE)),
        grading=Grading.model_validate_json(companion(GRADING_FILE)),
        spec=ModelSpec.model_validate_json(companion(SPEC_FILE)),
    )
