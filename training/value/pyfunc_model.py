"""The MLflow pyfunc of crm-customer-value, logged as "model from code".

MLflow runs this file when it loads the model (``mlflow.pyfunc.load_model``):
``set_model`` at the bottom hands it the model object, and ``load_context`` reads
the LightGBM text models and value.json. Nothing is pickled. Application code uses
``training.value.scorer.load_value_model`` instead.

Input: a DataFrame of the model's features (the customer_value feature service).
Output: clv, clv_low, clv_high, expected_margin, tier per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class CustomerValueModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from training.value.scorer import SPEC_FILE, read_value_files

        self.model = read_value_files(Path(context.artifacts[SPEC_FILE]).parent)

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.model.predict(pd.DataFrame(model_input)).reset_index(drop=True)


mlflow.models.set_model(CustomerValueModel())
