"""What a worker serves changes only through the registry, and every change is in the chain."""

from __future__ import annotations

import json
from collections.abc import Callable

import sqlalchemy as sa
from fastapi.testclient import TestClient

from serving.audit.signing import PublicKeys
from serving.served import STATE_KEY
from serving.settings import Settings
from tests.support.models import Registry
from training.model import ScoringModel


def test_a_forged_serving_state_row_cannot_choose_the_model(
    client: TestClient, registry: Registry, scoring_model_v2: ScoringModel
) -> None:
    """An attacker's row names an unpromoted version: workers reload the champion, never it."""
    svc = client.app.state.service  # type: ignore[attr-defined]
    unpromoted = registry.add(scoring_model_v2, champion=False)
    forged = {"generation": "x", "uri": f"models:/sme-default-pd/{unpromoted}"}
    svc.store.set_state(STATE_KEY, json.dumps(forged))
    calls = registry.calls
    svc.follow()
    assert registry.calls == calls + 1  # the signal was followed...
    assert svc.holder.current.info["version"] == registry.champion != unpromoted  # ...not the uri


def test_every_model_change_is_a_signed_record_of_the_chain(
    client: TestClient,
    registry: Registry,
    scoring_model_v2: ScoringModel,
    headers: Callable[[str], dict[str, str]],
    settings: Settings,
) -> None:
    svc = client.app.state.service  # type: ignore[attr-defined]
    first = svc.store.last_model_change()
    assert first["kind"] == "model_change" and first["old_model"] is None
    assert first["new_model"] == {"name": "sme-default-pd", "version": "1", "run_id": "run1"}
    new = registry.add(scoring_model_v2)
    r = client.post("/v1/admin/reload", headers=headers("admin"))
    assert r.status_code == 200, r.text
    change = svc.store.last_model_change()
    assert change["old_model"]["version"] == "1" and change["new_model"]["version"] == new
    assert change["new_model"]["run_id"] == f"run{new}" and "admin reload" in change["by"]
    assert change["sequence"] > first["sequence"]
    r = client.post("/v1/admin/reload", headers=headers("admin"))  # the same champion again
    assert svc.store.last_model_change()["sequence"] == change["sequence"]
    t = svc.store.decisions
    signed = svc.store.read(sa.select(t.c.signature).where(t.c.seq == change["sequence"]))
    assert signed[0][0]
    report = svc.store.verify(public_keys=PublicKeys.read(settings.public_keys_path))
    assert report.ok and report.model_changes == 2, report
    # not a decision: neither listed nor served as one
    assert svc.store.count() == 0
    r = client.get(f"/v1/decisions/{change['decision_id']}", headers=headers("auditor"))
    assert r.status_code == 404
