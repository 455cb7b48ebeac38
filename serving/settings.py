"""The scoring service's typed settings, read from the environment with laptop-safe defaults.

They extend the training package's `TrackingSettings` (the MLflow store and default model)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from training.settings import TrackingSettings

if TYPE_CHECKING:
    from serving.scoring import Limits

ExplainMethod = Literal["fast", "pred_contrib", "tree_shap"]


class Settings(TrackingSettings):
    """Environment configuration (interfaces.md). Build it where needed; never at import time."""

    audit_db: str = Field(default="sqlite:///models/audit.db", validation_alias="SCF_RISK_AUDIT_DB")
    api_keys: Path = Field(
        default=Path("models/api-keys.json"), validation_alias="SCF_RISK_API_KEYS"
    )
    env: str = Field(default="development", validation_alias="SCF_RISK_ENV")

    # --- the scoring service (serving/) ---
    max_body_bytes: int = Field(
        default=16_000_000,  # a full batch of 1,000 SMEs with every feature is ~3.4 MB
        gt=0,
        validation_alias="SCF_RISK_MAX_BODY_BYTES",
        description="Largest request body accepted; larger ones get 413.",
    )
    batch_limit: int = Field(
        default=1000,
        gt=0,
        validation_alias="SCF_RISK_BATCH_LIMIT",
        description="Most items in one POST /v1/scores/batch; more get 422.",
    )
    batch_threads: int = Field(
        default=1,
        ge=1,
        validation_alias="SCF_RISK_BATCH_THREADS",
        description="More than 1: a batch's TreeSHAP, its reasons' side probes and its "
        "what-if margins are computed by the compiled kernels over numba's threads wherever a "
        "kernel call holds 256 rows or probes or more (3 probes a reason: from about 22 items), "
        "without the GIL (the same values, bit for bit), one batch at a time per worker. "
        "1 by default: with both workers busy there is no idle core to take them, "
        "and the threads cost CPU (measured on a loaded 2-core machine: about 7 % more server "
        "CPU per SME, no faster).",
    )
    min_coverage: float = Field(
        default=0.5,
        ge=0,
        le=1,
        validation_alias="SCF_RISK_MIN_COVERAGE",
        description="Least share of the model's gain importance the features present must "
        "carry; below it a request is refused (422) unless it sets allow_sparse.",
    )
    max_feature_age_days: int = Field(
        default=45,
        ge=0,
        validation_alias="SCF_RISK_MAX_FEATURE_AGE_DAYS",
        description="sme_id-only requests: refuse materialised features older than this many "
        "days before as_of.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        validation_alias="SCF_RISK_CORS_ORIGINS",
        description="Origins allowed by CORS (JSON list); empty = CORS closed.",
    )
    explain_method: ExplainMethod = Field(
        default="fast",
        validation_alias="SCF_RISK_EXPLAIN_METHOD",
        description="SHAP backend: 'fast' (the project's compiled exact TreeSHAP), LightGBM's "
        "pred_contrib or shap's TreeExplainer; all give the same points to 1e-9.",
    )
    host: str = Field(default="127.0.0.1", validation_alias="SCF_RISK_HOST")
    port: int = Field(default=8000, ge=0, le=65535, validation_alias="SCF_RISK_PORT")
    workers: int = Field(default=1, ge=1, validation_alias="SCF_RISK_WORKERS")
    model_load_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        validation_alias="SCF_RISK_MODEL_LOAD_WAIT_SECONDS",
        description="How long start-up waits for the model; after that the service starts "
        "not ready and keeps loading in the background.",
    )
    reload_poll_seconds: float = Field(
        default=2.0,
        gt=0,
        validation_alias="SCF_RISK_RELOAD_POLL_SECONDS",
        description="How often each worker checks whether another worker reloaded the model.",
    )

    # --- the signed audit trail (serving/audit/) ---
    audit_signing_key: Path | None = Field(
        default=None,
        validation_alias="SCF_RISK_AUDIT_SIGNING_KEY",
        description="Ed25519 private key (PEM) that signs every record and checkpoint; never "
        "in the audit database. Default: audit-signing-key.pem beside the API keys (created "
        "0600 on first run in development only).",
    )
    audit_public_keys: Path | None = Field(
        default=None,
        validation_alias="SCF_RISK_AUDIT_PUBLIC_KEYS",
        description="Every public key the trail was signed with (JSON); all `audit verify` "
        "needs. Default: audit-public-keys.json beside the API keys.",
    )
    audit_checkpoints: Path | None = Field(
        default=None,
        validation_alias="SCF_RISK_AUDIT_CHECKPOINTS",
        description="Append-only file of signed checkpoints (sequence, head hash, time), outside "
        "the audit database. Default: audit-checkpoints.jsonl beside the API keys.",
    )
    audit_signing: bool = Field(
        default=True,
        validation_alias="SCF_RISK_AUDIT_SIGNING",
        description="Sign every record and write checkpoints. Off (false) only to measure what "
        "they cost (`python -m bench audit`): records are then hash-chained but unsigned, "
        "responses carry no receipt. Refused in production.",
    )
    checkpoint_every_records: int = Field(
        default=1000, gt=0, validation_alias="SCF_RISK_CHECKPOINT_EVERY_RECORDS"
    )
    checkpoint_every_seconds: float = Field(
        default=10.0, gt=0, validation_alias="SCF_RISK_CHECKPOINT_EVERY_SECONDS"
    )
    metrics_key: str | None = Field(
        default=None,
        validation_alias="SCF_RISK_METRICS_KEY",
        description="When set, GET /metrics needs it (header X-Metrics-Key or a bearer token).",
    )

    keys_recheck_seconds: float = Field(
        default=1.0,
        ge=0,
        validation_alias="SCF_RISK_KEYS_RECHECK_SECONDS",
        description="How often each worker looks at the API keys file for changes (0: on every "
        "request): a key added or revoked takes effect within this many seconds, so a revoked "
        "key stays valid for at most that long.",
    )
    ready_probe_reuse_seconds: float = Field(
        default=1.0,
        ge=0,
        validation_alias="SCF_RISK_READY_PROBE_REUSE_SECONDS",
        description="GET /readyz proves the audit store writable by committing a 64 KiB write; "
        "a success younger than this many seconds answers for the next calls (0: every call "
        "writes), so a flood of readiness calls costs at most one write per interval. A failure "
        "is never reused.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        validation_alias="SCF_RISK_HEADER_TIMEOUT_SECONDS",
        description="A connection must send each request's head (request line and headers) "
        "within this many seconds, or it is closed.",
    )
    access_log: bool | None = Field(
        default=None,
        validation_alias="SCF_RISK_ACCESS_LOG",
        description="uvicorn's access log, a line per request. Unset: off in production, where "
        "the audit store records every decision and /metrics counts every request (a formatted "
        "line and a write per request saved); on elsewhere.",
    )
    keep_alive_seconds: int = Field(
        default=5,
        gt=0,
        validation_alias="SCF_RISK_KEEP_ALIVE_SECONDS",
        description="How long an idle keep-alive connection stays open.",
    )

    @property
    def signing_key_path(self) -> Path:
        return self.audit_signing_key or self.api_keys.parent / "audit-signing-key.pem"

    @property
    def public_keys_path(self) -> Path:
        return self.audit_public_keys or self.api_keys.parent / "audit-public-keys.json"

    @property
    def checkpoints_path(self) -> Path:
        return self.audit_checkpoints or self.api_keys.parent / "audit-checkpoints.jsonl"

    @field_validator("env")
    @classmethod
    def _known_env(cls, value: str) -> str:
        if value not in ("development", "test", "production"):
            raise ValueError(f"expected development, test or production, got {value!r}")
        return value

    @model_validator(mode="after")
    def _signed_in_production(self) -> Settings:
        if self.env == "production" and not self.audit_signing:
            raise ValueError(
                "SCF_RISK_AUDIT_SIGNING=false is refused in production: an unsigned audit "
                "trail can be forged by anyone who can write its database"
            )
        return self

    @property
    def limits(self) -> Limits:
        """The scoring core's refusal thresholds."""
        from serving.scoring import Limits

        return Limits(self.min_coverage, self.max_feature_age_days)

    @property
    def access_log_on(self) -> bool:
        """Whether `scf-risk serve` writes uvicorn's access log (`access_log`)."""
        return self.access_log if self.access_log is not None else self.env != "production"

    @property
    def is_development(self) -> bool:
        return self.env == "development"
