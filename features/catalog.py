"""The feature catalog: every feature declared once (shared/docs/features.md).

The pipeline's output columns, LightGBM's monotone constraints, the API schema and the reason-code
text all read this module. Nothing else in the code lists feature names by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal[-1, 0, 1]
Kind = Literal["numeric", "categorical"]


@dataclass(frozen=True)
class Feature:
    """One feature: its name, group, a description a borrower or auditor can read, unit, risk
    direction (+1 more risk as it grows, -1 less, 0 none/unconstrained) and kind."""

    name: str
    group: str
    description: str
    unit: str
    direction: Direction
    kind: Kind = "numeric"


CATALOG: tuple[Feature, ...] = ()
"""The static catalog; `fin_*` features are added per dataset."""
