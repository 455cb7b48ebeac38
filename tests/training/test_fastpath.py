"""The per-request fast path (`records_matrix` / `explain_records`) equals the pandas path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.panels import INDUSTRY_EFFECT
from training.exceptions import ModelInputError
from training.model import ScoringModel


def _value(kind: str) -> st.SearchStrategy[object]:
    if kind == "categorical":
        return st.one_of(st.none(), st.sampled_from([*sorted(INDUSTRY_EFFECT), "unseen", "1"]))
    return st.one_of(
        st.none(),
        st.just(float("nan")),
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.integers(min_value=-1000, max_value=1000),
        st.booleans(),
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_records_matrix_equals_the_pandas_matrix(trained, data) -> None:  # type: ignore[no-untyped-def]
    model: ScoringModel = trained.model
    n = data.draw(st.integers(min_value=1, max_value=4))
    rows = []
    for _ in range(n):
        chosen = data.draw(st.sets(st.sampled_from(model.feature_names), max_size=8))
        by_name = {f.name: f for f in model.catalog}
        rows.append({name: data.draw(_value(by_name[name].kind)) for name in sorted(chosen)})
    frame = pd.DataFrame(rows, index=pd.RangeIndex(n))
    fast = model.records_matrix(rows)
    slow = model.matrix(frame)
    np.testing.assert_array_equal(fast, slow)  # NaN positions equal too
    a, b = model.explain_records(rows), model.explain(frame)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.points.to_numpy(), b.points.to_numpy())
    np.testing.assert_array_equal(a.base_points, b.base_points)


def test_records_matrix_refuses_what_the_pandas_path_refuses(trained) -> None:  # type: ignore[no-untyped-def]
    model: ScoringModel = trained.model
    with pytest.raises(ModelInputError, match="unknown feature column"):
        model.records_matrix([{"dso_days": 1.0}])
    with pytest.raises(ModelInputError, match="dso_90d: expected numbers, got 'abc'"):
        model.records_matrix([{"dso_90d": "1"}, {"dso_90d": "abc"}])
    with pytest.raises(ModelInputError, match="infinite"):
        model.records_matrix([{"dso_90d": float("inf")}])
    keyed = model.records_matrix([{"sme_id": "S1", "as_of": "2022-01-31", "default_12m": 0}])
    assert np.isnan(keyed).all()
