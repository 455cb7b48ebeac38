"""A history-mode decision keeps what its caller sent; `replay` recomputes the features from it."""

from __future__ import annotations

import copy
from pathlib import Path

from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.api.keys import add_key
from serving.demo import demo_request
from serving.scoring import _hash, history_inputs, replay
from serving.settings import Settings
from tests.support.load import make_signing_key
from tests.support.models import Registered
from training.bundle import load_model


def test_replay_recomputes_a_history_decision_from_its_recorded_rows(
    registered: Registered, tmp_path: Path
) -> None:
    settings = Settings(
        mlflow_tracking_uri=registered.tracking_uri,
        audit_db=f"sqlite:///{tmp_path}/audit.db",
        api_keys=tmp_path / "keys.json",
        env="test",
    )
    key = add_key(settings.api_keys, "scorer")[1]
    make_signing_key(tmp_path)
    body = demo_request(registered.data)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/scores", json=body, headers={"X-API-Key": key})
        assert r.status_code == 200, r.text
        stored = c.app.state.service.store.get(r.json()["decision_id"])  # type: ignore[attr-defined]
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
