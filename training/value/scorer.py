"""A registered customer-value version as serving and batch scoring use it.

``load_value_model`` loads a version by alias (default champion) or number, like
``training.model.load_model`` loads the binary champions; ``ValueModel.predict``
gives each row its predicted spend over the horizon (``clv``), the interval, the
expected margin and the tier; ``ValueModel.reasons`` the features pushing the
prediction up and down.

A version's artifacts are LightGBM text models and one JSON file — nothing is
unpickled:

* ``value.json``: ``ValueSpec`` (features, settings, objective kind, scale, conformal
  correction, tier thresholds);
* ``clv.lgb`` (kind ``tweedie``) or ``buy.lgb`` + ``spend.lgb`` (kind ``two_part``);
* ``low.lgb``, ``high.lgb``: the quantile models of the interval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crmdata.errors import CrmscoreError
from training.booster_predict import BoosterPredict
from training.encoding import Encoder
from training.explain import explainer_for
from training.model import Reason, _plain, reason_lists
from training.tasks import VALUE
from training.value.spec import SPEND_365, ValueSettings, ValueSpec, expected_margin, run_rate
from training.value.tiers import assign_tiers

if TYPE_CHECKING:
    import lightgbm as lgb
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

SPEC_FILE = "value.json"
#: booster role -> file; which roles a version has depends on its kind.
BOOSTER_FILES = {"clv": "clv.lgb", "buy": "buy.lgb", "spend": "spend.lgb", "low": "low.lgb", "high": "high.lgb"}
ROLES = {"tweedie": ("clv", "low", "high"), "two_part": ("buy", "spend", "low", "high")}
#: The columns of ``ValueModel.predict``.
PREDICTION_COLUMNS = ("clv", "clv_low", "clv_high", "expected_margin", "tier")


@dataclass
class ValueModel:
    """A customer-value version, ready to score."""

    name: str
    version: str
    run_id: str | None
    spec: ValueSpec
    boosters: dict[str, lgb.Booster]
    alias: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> ValueSettings:
        return self.spec.settings

    @property
    def feature_names(self) -> list[str]:
        return self.spec.model.features

    @cached_property
    def encoder(self) -> Encoder:
        return Encoder.of(self.spec.model)

    @cached_property
    def _predict(self) -> dict[str, BoosterPredict]:
        return {role: BoosterPredict(booster) for role, booster in self.boosters.items()}

    def _raw(self, role: str, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        if not kwargs:  # the objective's output with Booster.predict's defaults: the C call alone
            return self._predict[role](x)
        return np.asarray(self.boosters[role].predict(x, num_threads=1, **kwargs), dtype=float)

    def mean(self, x: np.ndarray) -> np.ndarray:
        """Predicted spend over the horizon for the booster input ``x`` (already encoded)."""
        if self.spec.kind == "tweedie":
            mean = self._raw("clv", x)
        else:
            mean = self._raw("buy", x) * self._raw("spend", x)
        return self.spec.scale * self.spec.horizon_factor * mean

    def interval(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The conformalized quantile interval (spend is never negative, so neither is its low end)."""
        # An extended model (window_days set) moves its interval with its level, as its mean; otherwise the
        # interval was calibrated as it is, and the total's scale is the mean's alone.
        factor = self.spec.horizon_factor * (self.spec.scale if self.spec.window_days else 1.0)
        low = np.maximum(self._raw("low", x) - self.spec.conformal, 0.0) * factor
        high = np.maximum(self._raw("high", x) + self.spec.conformal, 0.0) * factor
        return low, np.maximum(high, low)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """clv, clv_low, clv_high, expected_margin and tier for each row of a feature frame (same index).

        For a customer unlikely to buy at all (P(buy) below 1 − level/2), the interval can be
        [0, small] while the mean (clv) lies above it: the mean counts the rare large outcome the
        interval leaves out. Both are right; they answer different questions.
        """
        x = self.encoder.frame(frame)
        clv = self.mean(x)
        low, high = self.interval(x)
        margin = expected_margin(clv, frame, self.settings)
        tier = assign_tiers(clv, margin, run_rate(frame, SPEND_365), self.spec.thresholds, self.settings)
        return pd.DataFrame({"clv": clv, "clv_low": low, "clv_high": high, "expected_margin": margin,
                             "tier": tier}, index=frame.index)

    def contributions(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """Exact per-feature contributions to log(clv) (rows × features), TreeSHAP's (LightGBM's
        ``pred_contrib`` values, from each booster's precomputed ``TreeExplainer``).

        Tweedie: its raw score is log(mean), so the contributions are exact as they are. Two-part:
        log clv = log P(buy) + log E[spend | buy]; the spend model's raw score is that log
        (gamma objective) and its contributions are exact; the buy model's are in log-odds, and
        each feature's share of log σ(f) − log σ(f₀) is its share of f − f₀ (f₀ the bias), so the
        contributions still add up, with the bias, to log(clv) exactly.
        """
        # (The constant factors scale and horizon_factor only move the bias: no feature's share.)
        if self.spec.kind == "tweedie":
            return explainer_for(self.boosters["clv"]).contributions(x, threads)[:, :-1]
        spend = explainer_for(self.boosters["spend"]).contributions(x, threads)[:, :-1]
        buy = explainer_for(self.boosters["buy"]).contributions(x, threads)
        logit_contrib, bias = buy[:, :-1], buy[:, -1]
        f = bias + logit_contrib.sum(axis=1)
        log_sigmoid = -np.logaddexp(0.0, -f)
        gap = f - bias
        # d log σ(f) / df = 1 − σ(f): the ratio's limit when a row's contributions cancel.
        ratio = np.where(np.abs(gap) > 1e-12,
                         (log_sigmoid + np.logaddexp(0.0, -bias)) / np.where(np.abs(gap) > 1e-12, gap, 1.0),
                         1.0 / (1.0 + np.exp(f)))
        return spend + logit_contrib * ratio[:, None]

    def reasons(self, frame: pd.DataFrame, top: int = 3) -> list[dict[str, list[Reason]]]:
        """The top features pushing each customer's predicted value up and down; ``impact`` is the
        feature's exact contribution to log(clv) (so exp(impact) is the factor it multiplies clv by)."""
        contrib = self.contributions(self.encoder.frame(frame))
        values = frame[self.feature_names].to_numpy(dtype=object)
        return reason_lists(contrib, self.feature_names, lambda j, i: _plain(values[i, j]), top)


def save_value_files(directory: Path, spec: ValueSpec, boosters: dict[str, lgb.Booster]) -> list[Path]:
    """Write a version's files (LightGBM text models and value.json); returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    missing = set(ROLES[spec.kind]) - set(boosters)
    if missing:
        raise ValueError(f"a {spec.kind} value model needs boosters {sorted(missing)}")
    paths = [directory / SPEC_FILE]
    paths[0].write_text(spec.model_dump_json(indent=2))
    for role in ROLES[spec.kind]:
        path = directory / BOOSTER_FILES[role]
        boosters[role].save_model(str(path), num_iteration=boosters[role].best_iteration or None)
        paths.append(path)
    return paths


def read_value_files(directory: Path, name: str = "", version: str = "", run_id: str | None = None,
                     alias: str | None = None) -> ValueModel:
    """The model saved under ``directory`` (found anywhere below it, as MLflow nests artifacts)."""
    import lightgbm as lgb

    def find(file: str) -> Path:
        hit = next(directory.rglob(file), None)
        if hit is None:
            raise CrmscoreError(f"{name or directory} version {version or '?'}: no {file} in its artifacts")
        return hit

    spec = ValueSpec.model_validate_json(find(SPEC_FILE).read_text())
    boosters = {role: lgb.Booster(model_file=str(find(BOOSTER_FILES[role]))) for role in ROLES[spec.kind]}
    return ValueModel(name=name or spec.model.model_name, version=version, run_id=run_id, spec=spec,
                      boosters=boosters, alias=alias)


def load_value_model(name: str = VALUE.model_name, alias: str | None = "champion", version: str | None = None,
                     client: MlflowClient | None = None) -> ValueModel:
    """Load a registered version by alias (default champion) or by number."""
    from training.registry import configure_mlflow, download_version

    local, mv = download_version(name, alias, version, client or configure_mlflow(),
                                 train_hint=f"`crmscore train {VALUE.key}`")
    model = read_value_files(local, name, str(mv.version), mv.run_id, None if version else alias)
    log.info("loaded %s version %s (%s)", name, model.version, alias if not version else "by number")
    return model


def load_run_value_model(run_id: str) -> ValueModel:
    """The model a training run logged, registered or not (a backtest fold's)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model"))
    except MlflowException as exc:
        raise CrmscoreError(f"training run {run_id} has no logged model ({exc.message.splitlines()[0]})") from None
    return read_value_files(local, run_id=run_id)
