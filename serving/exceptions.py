"""Domain errors of the serving package.

Only the API layer (`serving.api.errors`) turns them into HTTP responses, and only the command line
(`features.cli_helpers.domain_errors_exit`) into exit codes.
"""

from __future__ import annotations

from typing import Any

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


class Unscorable(ServingError):
    """A request that cannot be scored: `loc` names the field (in a batch, after the item's
    index), `kind` the problem; `value` and `domain` the offending value and its catalog domain
    for a value outside it."""

    kind = "value_error"

    def __init__(
        self,
        loc: tuple[str | int, ...],
        message: str,
        value: object = None,
        *,
        domain: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.loc = loc
        self.message = message
        self.value = value
        self.domain = domain
        if kind is not None:
            self.kind = kind
        where = ".".join(str(p) for p in loc)
        super().__init__(f"{where}: {message}")


class InvalidInput(Unscorable):
    """A request that passed the schema but cannot be scored, by the caller's doing."""


class StoredFeaturesInvalid(Unscorable):
    """An SME's materialised features (the online feature table) hold a value outside its
    catalog domain: the service's data is wrong, not the request; nothing is scored."""

    kind = "stored_feature_out_of_domain"


class BatchRefused(ServingError):
    """No item of a batch can be scored, so the batch as a whole is refused: `errors` are the
    items' error entries (capped), `count` how many problems there were in all."""

    def __init__(self, errors: list[dict[str, Any]], count: int) -> None:
        self.errors = errors
        self.count = count
        super().__init__(f"no item of the batch can be scored ({count} problem(s))")


class KeysError(ServingError):
    """The API keys file is missing, unreadable, malformed or holds placeholder keys."""


class SigningKeyError(ServingError):
    """The audit signing key or public keys file is missing, unreadable or malformed."""
