"""Hypothesis strategies shared by the explanation and scoring tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st


def near_splits(cuts: list[float], *also: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A feature's value where its sides change: on a split, just above one, anywhere around
    them, or missing (and whatever `also` draws)."""
    cuts = cuts or [0.0]
    return st.one_of(
        st.sampled_from(cuts),
        st.sampled_from(cuts).map(lambda c: float(np.nextafter(c, np.inf))),
        st.floats(min(cuts) - 10, max(cuts) + 10),
        st.none(),
        *also,
    )
