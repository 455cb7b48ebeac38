"""Domain errors of the serving package.

Only the API layer (`serving.api.errors`) turns them into HTTP responses, and only the command line
(`features.cli_helpers.domain_errors_exit`) into exit codes.
"""

from __future__ import annotations

from features.exceptions import ScfRiskError


class ServingError(ScfRiskError):
    """Base of the serving package's domain errors."""


class ModelNotReady(ServingError):
    """No model is loaded (registry unreachable at start, or no champion yet)."""


class ModelLoadFailed(ServingError):
    """A model could not be loaded (unreachable registry, missing version, corrupt artifact)."""


class AuditUnavailable(ServingError):
    """The audit store cannot be written: scoring fails closed rather than decide unaudited."""


class AuditCorrupt(ServingError):
    """The audit chain or a stored record is not what was written (see `AuditStore.verify`)."""


class DecisionNotFound(ServingError):
    """No stored decision has that id."""


class InvalidInput(ServingError):
    """A request that passed the schema but cannot be scored; `loc` names the field."""

    def __init__(self, loc: tuple[str | int, ...], message: str, value: object = None) -> None:
        self.loc = loc
        self.message = message
        self.value = value
        where = ".".join(str(p) for p in loc)
        super().__init__(f"{where}: {message}")


class KeysError(ServingError):
    """The API keys file is missing, unreadable, malformed or holds placeholder keys."""


class SigningKeyError(ServingError):
    """The audit signing key or public keys file is missing, unreadable or malformed."""
