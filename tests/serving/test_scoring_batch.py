"""A batch is decided as its rows one by one: `scoring.decide` of many rows (reasons column by
column, side and what-if probes from the rows' leaf values) records every decision byte for byte
as a decision of that row alone (reasons row by row, probes routed again)."""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import scoring
from serving.audit.canonical import canonical_bytes
from serving.served import ServedModel, build_served
from tests.support.strategies import near_splits
from training.bundle import LoadedModel
from training.model import ScoringModel

AS_OF = date(2025, 1, 31)


@pytest.fixture(scope="module")
def served(scoring_model: ScoringModel) -> ServedModel:
    loaded = LoadedModel(scoring_model, "sme-default-pd", "1", "run1", "models:/sme-default-pd/1")
    return build_served(loaded, "fast")


def _inputs(rows: list[dict[str, Any]]) -> list[Any]:
    return [scoring._Inputs(f"S{i}", AS_OF, "features", row, f"h{i}") for i, row in enumerate(rows)]


def _alone_and_together(served: ServedModel, rows: list[dict[str, Any]]) -> None:
    inputs = _inputs(rows)
    together = [canonical_bytes(d.body()) for d in scoring.decide(served, inputs)]
    alone = [canonical_bytes(scoring.decide(served, [x])[0].body()) for x in inputs]
    assert together == alone


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_a_batch_records_each_row_as_alone(served: ServedModel, data: st.DataObject) -> None:
    """Values on, beside and between the splits, zeros of both signs, integers, missing (None,
    NaN, absent), known and unseen categories, repeated rows."""
    model = served.model
    view = scoring._view(model)
    n_rows = data.draw(st.integers(2, 8))
    rows: list[dict[str, Any]] = []
    for _ in range(n_rows):
        row: dict[str, Any] = {}
        for name in view.names:
            f = view.features[name]
            if data.draw(st.integers(0, 9)) == 0:
                continue  # not sent
            if f.kind == "categorical":
                known = list(model.categories[name])
                row[name] = data.draw(st.one_of(st.sampled_from(known), st.just("wood"), st.none()))
                continue
            also = (st.sampled_from([0.0, -0.0, float("nan")]), st.integers(-3, 40))
            row[name] = data.draw(near_splits(view.splits[name].tolist(), *also))
        rows.append(row)
    rows += rows[: data.draw(st.integers(0, n_rows))]
    _alone_and_together(served, rows)


def test_values_the_matrix_holds_as_another_type_are_written_as_recorded(
    served: ServedModel,
) -> None:
    """Numeric strings (the matrix reads them as numbers, the record keeps the text): the
    batch's reasons then say what a row alone says (the value as recorded, in its sentence)."""
    model = served.model
    view = scoring._view(model)
    rows = []
    for k in range(4):
        row: dict[str, Any] = {}
        for j, name in enumerate(view.names):
            if view.features[name].kind == "categorical":
                continue
            cuts = view.splits[name]
            value = float(cuts[(j + k) % len(cuts)]) if len(cuts) else 1.0
            row[name] = str(value) if (j + k) % 2 else value
        rows.append(row)
    decisions = scoring.decide(served, _inputs(rows))
    assert any(isinstance(r.value, str) for d in decisions for r in d.reasons)
    _alone_and_together(served, rows)


def _mixed_rows(served: ServedModel, n: int, *, strings_every: int = 0) -> list[dict[str, Any]]:
    """`n` rows of numeric values on and beside the splits (every `strings_every`-th row, when
    given, with its values as numeric strings)."""
    view = scoring._view(served.model)
    rows = []
    for k in range(n):
        row: dict[str, Any] = {}
        for j, name in enumerate(view.names):
            if view.features[name].kind == "categorical":
                continue
            cuts = view.splits[name]
            value = float(cuts[(j * 7 + k) % len(cuts)]) if len(cuts) else float(k % 3)
            if k % 3 == 1:
                value = float(np.nextafter(value, -np.inf))
            text = strings_every and k % strings_every == 0
            row[name] = str(value) if text else value
        rows.append(row)
    return rows


def test_only_the_rows_with_values_held_as_another_type_go_row_by_row(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch takes the column-wise reasons for every row whose drivers read back as recorded;
    only the others (numeric strings, every 5th row here) have their reasons found row by row,
    and the batch still records each row as alone."""
    rows = _mixed_rows(served, 20, strings_every=5)
    seen: list[int] = []
    driver_reasons = scoring._driver_reasons

    def spy(model: Any, M: np.ndarray, *args: Any, **kw: Any) -> Any:
        seen.append(len(M))
        return driver_reasons(model, M, *args, **kw)

    monkeypatch.setattr(scoring, "_driver_reasons", spy)
    scoring.decide(served, _inputs(rows))
    assert seen == [4]  # rows 0, 5, 10, 15 only
    monkeypatch.undo()
    _alone_and_together(served, rows)


def test_a_large_batch_on_two_threads_records_each_row_as_alone(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the parallel kernels' threshold, on 2 threads: the same records as each row alone
    (and the column-wise reasons are used: no row goes row by row)."""
    rows = _mixed_rows(served, 300)
    inputs = _inputs(rows)
    driver_reasons = scoring._driver_reasons
    seen: list[int] = []

    def spy(model: Any, M: np.ndarray, *args: Any, **kw: Any) -> Any:
        seen.append(len(M))
        return driver_reasons(model, M, *args, **kw)

    monkeypatch.setattr(scoring, "_driver_reasons", spy)
    together = [canonical_bytes(d.body()) for d in scoring.decide(served, inputs, threads=2)]
    assert seen == []
    monkeypatch.undo()
    alone = [canonical_bytes(scoring.decide(served, [x])[0].body()) for x in inputs]
    assert together == alone


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (None, None, True),
        (None, 0.0, False),
        (0.0, 0.0, True),
        (0.0, -0.0, False),
        (-0.0, -0.0, True),
        (1.5, 1.5, True),
        ("1.5", 1.5, False),
        ("food", "food", True),
        ("food", "metals", False),
        (float("nan"), float("nan"), False),  # never recorded (missing is None); row by row
        (1, 1.0, False),
        (True, 1.0, False),
    ],
)
def test_same_value(a: Any, b: Any, same: bool) -> None:
    assert scoring._same_value(a, b) is same
