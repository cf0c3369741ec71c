"""Training one task of the registry: ``crmscore train`` and the pipeline's train steps."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from crmdata.errors import CrmscoreError
from crmdata.lake import check_as_of, table_path
from crmdata.workspace import Workspace
from training.tasks import Task

if TYPE_CHECKING:
    from training.trainer import TrainResult


def train_task(ws: Workspace, task: Task, **options: Any) -> TrainResult:
    """Run ``task``'s trainer on the workspace.

    A binary task's trainer and customer value's read the workspace (features and Feast
    store), the recommender's only the lake; for customer value ``window_days`` is the
    horizon H (``--horizon``). Each takes the options that apply to it (churn a
    mode, the recommender an algorithm, ...); an option a trainer does not take, or
    left at None, is not passed, so it keeps the trainer's default.
    """
    missing = [t for t in task.needs if not table_path(ws.lake, t).exists()]
    if missing:
        # Refused before any feature is built: e.g. a subscription business has no orders to
        # learn next products from.
        raise CrmscoreError(f"{task.title} needs the {' and '.join(missing)} table(s), which {ws.lake} "
                            "does not have (docs/your-data.md says what each model needs)")
    as_of = options.get("as_of")
    if as_of is not None:
        options["as_of"] = as_of = check_as_of(ws.lake, as_of)
        if task.scorer == "recommender":
            # The recommender is fitted on orders before its cutoff and evaluated on the window
            # after it: that window must end by as_of.
            window = options.get("window_days") or task.window_days
            options["cutoff"] = as_of - timedelta(days=window)
    train = task.train_function()
    takes = inspect.signature(train).parameters
    data = ws.lake if task.scorer == "recommender" else ws
    return train(data, **{k: v for k, v in options.items() if k in takes and v is not None})
