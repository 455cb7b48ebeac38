"""The MLflow pyfunc flavour of a scoring model: `mlflow.pyfunc.load_model(uri).predict(frame)`
returns a frame of `pd`, `score`, `grade`. Serving loads the `ScoringModel` itself
(`training.registry.load_model`); this wrapper makes the logged model usable by any MLflow
tool (batch scoring, `mlflow models serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel
from scipy.special import expit

from training.bundle import ARTIFACT_KEY
from training.model import ScoringModel

MODEL_CODE = """\
# MLflow models-from-code entry point of an scf-risk scoring model (no pickled objects).
from mlflow.models import set_model

from training.pyfunc import ScoringPyfunc

set_model(ScoringPyfunc())
"""
"""Written beside the model at logging time and run by MLflow when it loads the model."""


class ScoringPyfunc(PythonModel):
    """Loads the `ScoringModel` saved under the model's `artifacts/scoring_model` folder."""

    def load_context(self, context: Any) -> None:
        self.model = ScoringModel.load(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """PD, score and grade of each row (a DataFrame hint: MLflow infers no schema from it;
        the logged signature describes the columns)."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        z = self.model.predict_logodds(frame)
        pd_ = expit(z)
        return pd.DataFrame(
            {
                "pd": pd_,
                "score": self.model.scale.score(z),
                "grade": self.model.master_scale.grade(pd_).astype(str),
            },
            index=frame.index,
        )
