"""Domain errors of the training package.

Every one is a `features.exceptions.ScfRiskError`, so the command-line edge turns it into its
message and exit code 1; only the edges (CLI, API) translate them.
"""

from __future__ import annotations

from features.exceptions import ScfRiskError


class TrainingError(ScfRiskError):
    """The input cannot train a model: no labels, no matured rows, one class, unknown columns..."""


class SettingsError(ScfRiskError):
    """An environment setting that does not parse or breaks its bounds (named in the message)."""


class TrackingUnavailableError(ScfRiskError):
    """The MLflow tracking store cannot be reached or created (checked before any training)."""


class ModelInputError(ScfRiskError):
    """Rows handed to a scoring model do not fit it: unknown columns, non-numeric values."""


class ModelLoadError(ScfRiskError):
    """A model URI that does not resolve to a scoring model (unknown alias, version, artifact)."""


class PromotionRejectedError(ScfRiskError):
    """A promotion whose gates failed; the decision and its reasons were recorded in MLflow."""

    def __init__(self, version: str, reasons: list[str], comparison: str = "") -> None:
        self.version = version
        self.reasons = reasons
        self.comparison = comparison  # the side-by-side table the gates were read from
        super().__init__(
            f"version {version} not promoted: " + "; ".join(reasons)
            if reasons
            else f"version {version} not promoted"
        )


class ComparisonError(ScfRiskError):
    """Two models cannot be compared fairly: no champion, no rows unseen by both, a bundle that
    does not record its training months."""
