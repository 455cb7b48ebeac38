"""Decision bodies the audit store tests append."""

from __future__ import annotations


def body(i: int, sme: str = "S1", grade: str = "G03") -> dict[str, object]:
    """The i-th of a series of distinct decision bodies (score, PD and features vary with i)."""
    return {
        "sme_id": sme,
        "as_of": "2024-01-31",
        "grade": grade,
        "score": 600.0 + i / 7,
        "pd": 0.01 + i / 1000,
        "features": {"dso_90d": float(i), "industry": "food", "missing": None},
        "contributions": {"dso_90d": -1.25 * i},
    }
