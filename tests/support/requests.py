"""What the API tests send and how they compare JSON answers."""

from __future__ import annotations

from typing import Any

SPARSE_FEATURES = {"dso_90d": 42.5, "industry": "food"}
"""Two features of a scoring request with `allow_sparse` (the rest missing, said so)."""


def typed(value: Any) -> Any:
    """A JSON value with the type of every number kept (1 and 1.0 differ)."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)
