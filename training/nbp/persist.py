"""The recommender on disk and in MLflow: .npy/.json files, the logged pyfunc, a registered version.

Nothing is pickled: a version is plain arrays and id maps plus ``pyfunc_model.py``
("model from code"), so it loads without the class definitions of the run that
made it. MLflow is imported inside the functions that need it, so the pyfunc can
read its artifacts with this module alone.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from crmdata.errors import CrmscoreError
from training.nbp.interactions import ORDERED_AT, read_lake
from training.nbp.recommender import MODEL_NAME, NbpSpec, Recommender

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
SPEC_FILE = "spec.json"
PRODUCTS_FILE = "products.json"
CUSTOMERS_FILE = "customer_ids.json"
ARRAY_FILES = ("user_factors", "item_factors", "history_indptr", "history_indices", "history_data",
               "customer_orders", "customer_segments", "popularity", "typical_amount", "typical_quantity")


def save_recommender(rec: Recommender, directory: Path) -> dict[str, Path]:
    """Write the recommender as .npy arrays and .json id maps; returns name → path (MLflow artifacts)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "user_factors": rec.user_factors, "item_factors": rec.item_factors,
        "history_indptr": rec.history.indptr.astype(np.int64), "history_indices": rec.history.indices.astype(np.int32),
        "history_data": rec.history.data.astype(np.float32), "customer_orders": rec.orders.astype(np.int64),
        "customer_segments": rec.customer_segments.astype(np.int16), "popularity": rec.popularity,
        "typical_amount": rec.typical_amount, "typical_quantity": rec.typical_quantity,
    }
    paths: dict[str, Path] = {}
    for name, array in arrays.items():
        paths[name] = directory / f"{name}.npy"
        np.save(paths[name], np.ascontiguousarray(array), allow_pickle=False)
    paths["spec"] = directory / SPEC_FILE
    paths["spec"].write_text(rec.spec.model_dump_json(indent=2))
    paths["products"] = directory / PRODUCTS_FILE
    paths["products"].write_text(json.dumps({
        "product_id": rec.product_ids.tolist(), "name": rec.product_names.tolist(),
        "category": rec.product_categories.astype(int).tolist(), "repeatable": rec.repeatable.tolist(),
    }))
    paths["customer_ids"] = directory / CUSTOMERS_FILE
    paths["customer_ids"].write_text(json.dumps(rec.customer_ids.tolist()))
    return paths


def read_recommender(paths: Mapping[str, str | Path], **attrs: object) -> Recommender:
    """Read what ``save_recommender`` wrote (``paths``: artifact name → file), without pickle."""
    def arr(name: str) -> np.ndarray:
        return np.load(paths[name], allow_pickle=False)

    spec = NbpSpec.model_validate_json(Path(paths["spec"]).read_text())
    products = json.loads(Path(paths["products"]).read_text())
    customers = np.asarray(json.loads(Path(paths["customer_ids"]).read_text()), dtype=str)
    product_ids = np.asarray(products["product_id"], dtype=str)
    history = sp.csr_matrix((arr("history_data"), arr("history_indices"), arr("history_indptr")),
                            shape=(len(customers), len(product_ids)))
    return Recommender(
        spec=spec, customer_ids=customers, product_ids=product_ids,
        product_names=np.asarray(products["name"], dtype=str),
        product_categories=np.asarray(products["category"], dtype=np.int64),
        repeatable=np.asarray(products["repeatable"], dtype=bool),
        user_factors=arr("user_factors"), item_factors=arr("item_factors"), history=history,
        orders=arr("customer_orders"), customer_segments=arr("customer_segments"),
        popularity=arr("popularity"), typical_amount=arr("typical_amount"),
        typical_quantity=arr("typical_quantity"), **attrs,  # type: ignore[arg-type]
    )


def artifact_paths(directory: Path) -> dict[str, Path]:
    """name → file of a saved recommender found anywhere under ``directory`` (a downloaded model)."""
    wanted = {**{n: f"{n}.npy" for n in ARRAY_FILES}, "spec": SPEC_FILE, "products": PRODUCTS_FILE,
              "customer_ids": CUSTOMERS_FILE}
    found: dict[str, Path] = {}
    for name, file in wanted.items():
        hit = next(directory.rglob(file), None)
        if hit is None:
            raise CrmscoreError(f"{directory}: no {file} among the model's artifacts")
        found[name] = hit
    return found


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.string, "customer_id"), ColSpec(DataType.string, "segment", required=False),
                     ColSpec(Array(DataType.string), "exclude", required=False)])
    outputs = Schema([
        ColSpec(DataType.string, "customer_id"), ColSpec(DataType.integer, "rank"),
        ColSpec(DataType.string, "product_id"), ColSpec(DataType.double, "score"),
        ColSpec(DataType.string, "reason"), ColSpec(DataType.string, "reason_product_id", required=False),
        ColSpec(DataType.boolean, "cold_start"),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("k", DataType.long, 10)]))


def log_model(rec: Recommender, example_ids: list[str]) -> Any:
    """Log the pyfunc (model from code) with .npy/.json artifacts only; returns the ModelInfo."""
    import mlflow

    from training.trainer import pinned_requirements

    with tempfile.TemporaryDirectory() as tmp:
        paths = save_recommender(rec, Path(tmp))
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={k: str(v) for k, v in paths.items()},
            signature=_signature(), input_example=pd.DataFrame({"customer_id": example_ids}),
            # Stated, so MLflow does not start a subprocess to infer them from the model file.
            pip_requirements=pinned_requirements("mlflow", "implicit", "numpy", "scipy", "polars", "pandas",
                                                 "pydantic"),
        )


def load_run_recommender(run_id: str) -> Recommender:
    """The recommender a training run logged, registered or not (a backtest fold's)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model"))
    except MlflowException as exc:
        raise CrmscoreError(f"training run {run_id} has no logged model ({exc.message.splitlines()[0]})") from None
    return read_recommender(artifact_paths(local), version="", alias=None, run_id=run_id)


def load_recommender(alias: str | None = "champion", version: str | None = None, client: Any = None,
                     lake: Path | None = None, as_of: datetime | None = None) -> Recommender:
    """A registered version (by alias, default champion, or number), from its .npy/.json artifacts.

    With ``lake``, the lake's orders (before ``as_of``, default: all) are folded in:
    current ownership and order counts, and factors for customers the model never saw.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.registry import configure_mlflow

    client = client or configure_mlflow()
    try:
        mv = client.get_model_version(MODEL_NAME, version) if version else \
            client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        wanted = f"version {version}" if version else f"alias @{alias}"
        raise CrmscoreError(f"{MODEL_NAME} has no {wanted}; train one with `crmscore train nbp`") from None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{mv.version}"))
    rec = read_recommender(artifact_paths(local), version=str(mv.version), alias=None if version else alias,
                           run_id=mv.run_id)
    log.info("loaded %s version %s (%s)", MODEL_NAME, rec.version, alias if not version else "by number")
    if lake is not None:
        data = read_lake(lake)
        orders = data.orders
        if as_of is None:
            as_of = orders[ORDERED_AT].max() + timedelta(microseconds=1)  # include the last order
        rec = rec.with_orders(orders, as_of, data.customers)
    return rec
