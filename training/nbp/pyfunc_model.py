"""The MLflow pyfunc of crm-next-best-product, logged as "model from code".

MLflow runs this file when it loads the model (``mlflow.pyfunc.load_model``):
``set_model`` at the bottom hands it the model object, and ``load_context``
reads the .npy/.json artifacts. Nothing is pickled. Do not import this module
from application code: use ``training.nbp.load_recommender`` instead.

Input: a DataFrame with ``customer_id`` (string) and optionally ``segment``
(string, for customers the model does not know) and ``exclude`` (list of product
ids never to return for that customer). Param ``k`` (default 10).
Output: one row per (customer, rank): customer_id, rank, product_id, score,
reason, reason_product_id, cold_start.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class NextBestProductModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from training.nbp.persist import read_recommender

        self.recommender = read_recommender(context.artifacts)

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        frame = pd.DataFrame(model_input)
        ids = frame["customer_id"].astype(str).tolist()
        segments = exclude = None
        if "segment" in frame.columns:
            segments = {c: str(s) for c, s in zip(ids, frame["segment"], strict=True) if isinstance(s, str) and s}
        if "exclude" in frame.columns:
            exclude = {c: [str(p) for p in e] for c, e in zip(ids, frame["exclude"], strict=True)
                       if e is not None and len(e)}
        return self.recommender.recommend_all(k=k, customer_ids=ids, segments=segments, exclude=exclude).to_pandas()


mlflow.models.set_model(NextBestProductModel())
