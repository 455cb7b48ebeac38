"""The project's one typed settings object, read from the environment with laptop-safe defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Environment configuration (interfaces.md). Build it where needed; never at import time."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    mlflow_tracking_uri: str = Field(
        default="sqlite:///models/mlflow.db", validation_alias="MLFLOW_TRACKING_URI"
    )
    model_uri: str = Field(
        default="models:/sme-default-pd@champion", validation_alias="SCF_RISK_MODEL"
    )
    audit_db: str = Field(default="sqlite:///models/audit.db", validation_alias="SCF_RISK_AUDIT_DB")
    api_keys: Path = Field(
        default=Path("models/api-keys.json"), validation_alias="SCF_RISK_API_KEYS"
    )
    env: str = Field(default="development", validation_alias="SCF_RISK_ENV")
