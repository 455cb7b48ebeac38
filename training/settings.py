"""The training package's settings: where MLflow tracks and registers models, and which model
is meant by default. Read from the environment; built where needed, never at import time."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from training.exceptions import SettingsError


class TrackingSettings(BaseSettings):
    """The MLflow tracking/registry store and the default model URI (interfaces.md)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    def __init__(self, **values: Any) -> None:
        """As BaseSettings, but a bad value is a `SettingsError` naming each variable and rule
        (the command line's exit 1), not a pydantic traceback. Values are not echoed: a setting
        may hold a password."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}"
                for e in exc.errors()
            )
            raise SettingsError(f"invalid setting: {problems}") from None

    mlflow_tracking_uri: str = Field(
        default="sqlite:///models/mlflow.db", validation_alias="MLFLOW_TRACKING_URI"
    )
    model_uri: str = Field(
        default="models:/sme-default-pd@champion", validation_alias="SCF_RISK_MODEL"
    )
