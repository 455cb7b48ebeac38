"""The OpenAPI document's examples: one request per mode and a batch, each accepted by a service
serving a model trained on simulated data; the response examples fit their schemas."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.api.keys import add_key
from serving.online import materialize
from serving.schemas import BatchScoreResponse, ScoreResponse
from serving.settings import Settings
from tests.support.load import make_signing_key
from tests.support.models import Registered

MODES = {"features": "features", "sme_id": "stored", "history": "history"}


def test_every_example_is_documented_and_accepted(registered: Registered, tmp_path: Path) -> None:
    settings = Settings(
        mlflow_tracking_uri=registered.tracking_uri,
        audit_db=f"sqlite:///{tmp_path}/audit.db",
        api_keys=tmp_path / "keys.json",
        env="test",
    )
    key = {"X-API-Key": add_key(settings.api_keys, "scorer")[1]}
    make_signing_key(tmp_path)
    with TestClient(create_app(settings)) as client:
        doc = client.get("/openapi.json").json()
        single = doc["paths"]["/v1/scores"]["post"]
        batch = doc["paths"]["/v1/scores/batch"]["post"]
        requests = single["requestBody"]["content"]["application/json"]["examples"]
        responses = single["responses"]["200"]["content"]["application/json"]["examples"]
        assert set(requests) == set(responses) == set(MODES)
        for example in responses.values():
            ScoreResponse.model_validate(example["value"])
        batch_requests = batch["requestBody"]["content"]["application/json"]["examples"]
        batch_responses = batch["responses"]["200"]["content"]["application/json"]["examples"]
        assert batch_requests and batch_responses
        for example in batch_responses.values():
            BatchScoreResponse.model_validate(example["value"])

        # the sme_id-only example needs the SME's features materialised shortly before its date
        stored = requests["sme_id"]["value"]
        as_of = pd.Timestamp(stored["as_of"])
        panel = registered.panel
        mine = panel[(panel["sme_id"] == stored["sme_id"]) & (panel["as_of"] <= as_of)]
        assert as_of - mine["as_of"].max() <= pd.Timedelta(days=45), mine["as_of"].max()
        materialize(client.app.state.service.store, mine)  # type: ignore[attr-defined]

        for name, mode in MODES.items():
            r = client.post("/v1/scores", json=requests[name]["value"], headers=key)
            assert r.status_code == 200, (name, r.text)
            assert r.json()["mode"] == mode and r.json()["sme_id"] == "S00001"
        for example in batch_requests.values():
            r = client.post("/v1/scores/batch", json=example["value"], headers=key)
            assert r.status_code == 200, r.text
            out = r.json()
            assert (out["scored"], out["failed"]) == (3, 0), out["errors"]
            assert [x["mode"] for x in out["results"]] == list(MODES.values())
