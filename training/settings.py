"""The training package's settings: where MLflow tracks and registers models, and which model
is meant by default. Read from the environment; built where needed, never at import time."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrackingSettings(BaseSettings):
    """The MLflow tracking/registry store and the default model URI (interfaces.md)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    mlflow_tracking_uri: str = Field(
        default="sqlite:///models/mlflow.db", validation_alias="MLFLOW_TRACKING_URI"
    )
    model_uri: str = Field(
        default="models:/sme-default-pd@champion", validation_alias="SCF_RISK_MODEL"
    )
