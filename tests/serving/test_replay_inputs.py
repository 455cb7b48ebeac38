"""A history-mode decision keeps what its caller sent; `replay` recomputes the features from it."""

from __future__ import annotations

import copy
from pathlib import Path

from serving.scoring import _hash, history_inputs, replay
from tests.support.models import Registered, demo_history_decision
from training.bundle import load_model


def test_replay_recomputes_a_history_decision_from_its_recorded_rows(
    registered: Registered, tmp_path: Path
) -> None:
    with demo_history_decision(registered, tmp_path) as (_, _, _, _, stored):
        pass
    inputs = history_inputs(stored)
    assert inputs is not None
    assert inputs["request"]["history"] and _hash(inputs) == stored["inputs_hash"]
    result = replay(stored, loader=load_model, tracking_uri=registered.tracking_uri)
    assert result.matches, str(result)
    text = str(result)
    assert "recomputed from the recorded history rows" in text
    assert f"pd: stored {stored['pd']!r}, replayed {stored['pd']!r}" in text
    assert "grade: stored" in text and "score: stored" in text
    # rows changed after the fact: the inputs hash says so, and so do the recomputed features
    forged = copy.deepcopy(stored)
    invoices = forged["input"]["normalised"]["history"]["invoices"]
    invoices[:] = invoices[: max(1, len(invoices) // 2)]
    bad = replay(forged, loader=load_model, tracking_uri=registered.tracking_uri)
    assert not bad.matches
    assert any("inputs hash" in d for d in bad.differences), str(bad)
