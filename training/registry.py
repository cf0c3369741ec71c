"""The MLflow registry: where models are found, registered, promoted and loaded.

Conventions shared by every model:
- one experiment per model, named like the registered model (``crm-churn``);
- each training run registers a version and gives it the alias ``challenger``
  (``register_and_gate``, the one tail every trainer shares);
- ``champion`` moves only through ``promote`` (the gate or a person), and the
  decision and its reason are recorded as version tags.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from crmdata.errors import CrmscoreError
from crmdata.workspace import mlflow_tracking_uri
from training.tasks import model_names

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
#: The experiment tag MLflow's UI reads to choose an experiment's view; without it the UI
#: guesses, and opened ours in the GenAI view (traces, token usage: all empty). Values from
#: the UI's ExperimentKind (mlflow/server/js): ours is classic model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def configure_mlflow() -> MlflowClient:
    """Point MLflow at the workspace's tracking store (creating the local folder if needed)."""
    uri = mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # Progress bars for kilobyte downloads only clutter CLI and service logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Use (creating if needed) the experiment ``name``, of the model-training kind; returns its id.

    With a local SQLite store the artifacts go beside the database (``mlflow/artifacts``)
    rather than into ``./mlruns`` of whatever directory the command ran in.
    """
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        experiment_id = existing.experiment_id
        # Experiments created before the kind was set get it on their next run.
        if existing.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    else:
        uri = mlflow_tracking_uri()
        location = None
        if uri.startswith("sqlite:///"):
            root = Path(uri.removeprefix("sqlite:///")).absolute().parent / "artifacts" / name
            location = root.as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def git_commit() -> str:
    """The commit the code was trained from (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None  # no such model or no such alias: both mean "none yet"


def download_version(name: str, alias: str | None, version: str | None, client: MlflowClient,
                     train_hint: str = "`crmscore train`") -> tuple[Path, ModelVersion]:
    """A registered version's artifacts on local disk: by number, else by alias (one error when absent)."""
    try:
        mv = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    except MlflowException:
        wanted = f"version {version}" if version else f"alias @{alias}"
        raise CrmscoreError(f"{name} has no {wanted}; train one with {train_hint}") from None
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}")), mv


def promote(client: MlflowClient, name: str, version: str, reason: str, by: str = "person") -> None:
    """Make ``version`` the champion, recording who decided and why."""
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise CrmscoreError(f"{name} has no version {version} (see `crmscore models list`)") from None
    client.set_registered_model_alias(name, CHAMPION, version)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in {"promoted": "true", "promotion_reason": reason, "promoted_by": by,
                       "promoted_at": now}.items():
        client.set_model_version_tag(name, version, key, value)
    log.info("%s version %s is now %s: %s", name, version, CHAMPION, reason)


@dataclass(frozen=True)
class Registration:
    """What ``register_and_gate`` did with a training run's model."""

    version: str
    promoted: bool
    reason: str

    @property
    def alias(self) -> str:
        """The alias the version ended with (a promoted version also keeps ``challenger``)."""
        return CHAMPION if self.promoted else CHALLENGER


def register_and_gate(client: MlflowClient, model_name: str, model_uri: str, headline: tuple[str, float],
                      gate: Callable[[], tuple[bool, str]],
                      version_tags: Mapping[str, str] | None = None, description: str = "") -> Registration:
    """Register a logged model as the challenger, ask the gate, record its answer, promote on yes.

    Every trainer ends this way, so every version carries the same tags: the
    headline metric (``crmscore models list`` shows it), the gate's decision and
    reason; and one line of description (the registry UI's column): ``description``,
    the trainer's headline metrics, and what the gate decided. The version is
    registered before the gate runs so that a challenger the
    gate keeps, or a gate that fails, still leaves a version a person can promote.
    Call it inside the training run: the decision is also tagged on the run.
    """
    version = str(mlflow.register_model(model_uri, model_name).version)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    metric, value = headline
    for key, tag in {"headline_metric": metric, "headline_value": f"{value:.4f}", **(version_tags or {})}.items():
        client.set_model_version_tag(model_name, version, key, tag)
    promoted, reason = gate()
    client.set_model_version_tag(model_name, version, "gate_decision", "promoted" if promoted else "kept")
    client.set_model_version_tag(model_name, version, "gate_reason", reason)
    decision = "promoted to champion" if promoted else "kept as challenger"
    client.update_model_version(model_name, version,
                                description=f"{description}; {decision}" if description else decision)
    mlflow.set_tags({"promoted": str(promoted).lower(), "promotion_reason": reason})
    if promoted:
        promote(client, model_name, version, reason, by="gate")
    return Registration(version=version, promoted=promoted, reason=reason)


class VersionRow(BaseModel):
    model: str
    version: str
    aliases: list[str]
    run_id: str | None
    created_at: datetime
    metric: str | None = None
    value: float | None = None
    decision: str | None = None


def list_versions(client: MlflowClient, names: tuple[str, ...] | None = None) -> list[VersionRow]:
    """Every registered version of our models (default: every task's), newest first, with its
    aliases and headline metric."""
    if names is None:
        names = model_names()
    rows: list[VersionRow] = []
    for name in names:
        try:
            registered = client.get_registered_model(name)
            versions = client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            continue  # not trained yet
        # search results carry no aliases in every store; the registered model does.
        aliases: dict[str, list[str]] = {}
        for alias, number in registered.aliases.items():
            aliases.setdefault(str(number), []).append(alias)
        for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
            tags = mv.tags or {}
            rows.append(
                VersionRow(
                    model=name,
                    version=str(mv.version),
                    aliases=sorted(aliases.get(str(mv.version), [])),
                    run_id=mv.run_id,
                    created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                    metric=tags.get("headline_metric"),
                    value=float(tags["headline_value"]) if "headline_value" in tags else None,
                    decision=tags.get("gate_reason"),
                )
            )
    return rows
