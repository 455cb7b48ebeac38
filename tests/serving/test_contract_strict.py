"""Nothing silent: each case that used to be scored quietly (or crashed) is now a 422 naming the
field, and a batch with one bad item scores the others."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.audit.store import AuditStore
from serving.online import materialize
from serving.settings import Settings
from tests.support.models import Registry, with_reference
from tests.support.problems import problem, problems
from training.model import ScoringModel

Headers = Callable[[str], dict[str, str]]
OK = {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True}


def _problems(client: TestClient, headers: Headers, body: Any) -> list[dict[str, Any]]:
    return problems(client.post("/v1/scores", json=body, headers=headers("scorer")))


def test_as_of_is_required(client: TestClient, headers: Headers) -> None:
    (p,) = _problems(client, headers, {"sme_id": "S1", "features": {"dso_90d": 1.0}})
    assert p["loc"] == ["body", "as_of"] and p["type"] == "missing"


@pytest.mark.parametrize("day", ["1600-01-01", "1677-09-21", "1899-12-31"])
def test_as_of_outside_the_supported_range(client: TestClient, headers: Headers, day: str) -> None:
    (p,) = _problems(client, headers, {**OK, "as_of": day, "features": {}})
    assert p["loc"] == ["body", "as_of"]
    assert f"date {day} outside the supported range 1900-01-01 to 2262-04-11" in p["msg"]


def test_history_date_outside_the_range_is_a_422_not_a_500(
    client: TestClient, headers: Headers
) -> None:
    row = {
        "invoice_id": "i1",
        "seller_id": "S1",
        "buyer_id": "C1",
        "issue_date": "1200-01-01",
        "due_date": "2024-01-01",
        "amount": 10.0,
    }
    problems = _problems(
        client, headers, {**OK, "as_of": "1650-01-01", "history": {"invoices": [row]}}
    )
    locs = [p["loc"] for p in problems]
    assert ["body", "as_of"] in locs
    assert ["body", "history", "invoices", 0, "issue_date"] in locs


@pytest.mark.parametrize(
    ("name", "value", "domain"),
    [
        ("ar_90p_share", 1.5, "[0, 1]"),
        ("ar_90p_share", -0.1, "[0, 1]"),
        ("dso_90d", -3.0, "[0, 36500]"),
        ("payment_index_365d", 0.0, "[1, 100]"),
        ("sales_growth_qoq", -2.0, "[-1, 1e+06]"),
    ],
)
def test_values_outside_their_domain(
    client: TestClient, headers: Headers, name: str, value: float, domain: str
) -> None:
    (p,) = _problems(client, headers, {**OK, "features": {name: value}})
    assert p["loc"] == ["body", "features", name]
    assert f"value {value!r} outside the domain {domain}" in p["msg"]


def test_unknown_category_lists_the_known_ones(client: TestClient, headers: Headers) -> None:
    (p,) = _problems(client, headers, {**OK, "features": {"industry": "Textiles"}})
    assert p["loc"] == ["body", "features", "industry"]
    assert "unknown category 'Textiles'" in p["msg"] and "'textiles'" in p["msg"]


def test_low_coverage_needs_allow_sparse_and_is_recorded(
    client: TestClient, headers: Headers
) -> None:
    body = {"sme_id": "S1", "as_of": "2024-06-30", "features": {"dso_90d": 12.0}}
    (p,) = _problems(client, headers, body)
    assert p["loc"] == ["body", "features"]
    assert "coverage too low" in p["msg"] and "allow_sparse" in p["msg"]
    r = client.post("/v1/scores", json={**body, "allow_sparse": True}, headers=headers("scorer"))
    assert r.status_code == 200
    out = r.json()
    assert out["allow_sparse"] is True and out["coverage"]["present"] == 1
    assert 0 <= out["coverage"]["gain_share"] < 0.5
    stored = client.get(f"/v1/decisions/{out['decision_id']}", headers=headers("auditor")).json()
    assert stored["allow_sparse"] is True and stored["coverage"] == out["coverage"]


def test_full_rows_pass_coverage_without_allow_sparse(client: TestClient, headers: Headers) -> None:
    from tests.support.models import synthetic_rows

    frame, _ = synthetic_rows(1, seed=5)
    features = {
        k: (v if isinstance(v, str) else float(v))
        for k, v in frame.iloc[0].items()
        if v == v  # NaN left out
    }
    body = {"sme_id": "S1", "as_of": "2024-06-30", "features": features}
    r = client.post("/v1/scores", json=body, headers=headers("scorer"))
    assert r.status_code == 200, r.text
    assert r.json()["coverage"]["gain_share"] >= 0.5 and r.json()["allow_sparse"] is False


def test_raw_input_is_kept_beside_the_normalised_one(client: TestClient, headers: Headers) -> None:
    body = {**OK, "features": {"dso_90d": 12, "industry": "food"}}  # 12 sent as an integer
    r = client.post("/v1/scores", json=body, headers=headers("scorer"))
    assert r.status_code == 200, r.text
    stored = client.get(
        f"/v1/decisions/{r.json()['decision_id']}", headers=headers("auditor")
    ).json()
    assert stored["input"]["raw"] == body
    assert stored["input"]["normalised"]["features"] == {"dso_90d": 12.0, "industry": "food"}


def test_unknown_and_never_materialised_smes_are_told_apart(
    settings: Settings, keys: dict[str, str], scoring_model: ScoringModel, tmp_path: Path
) -> None:
    registry = Registry()
    registry.add(with_reference(scoring_model, tmp_path))
    with TestClient(create_app(settings, loader=registry)) as client:
        said = {}
        for sme_id in ("S2", "S404"):
            body = {"sme_id": sme_id, "as_of": "2024-06-30", "allow_sparse": True}
            r = client.post("/v1/scores", json=body, headers={"X-API-Key": keys["scorer"]})
            (p,) = problems(r)
            assert p["loc"] == ["body", "sme_id"] and p["type"] == "value_error"
            said[sme_id] = p["msg"]
    assert (
        "SME S2 is known to the model's reference data but its features were never " in said["S2"]
    )
    assert "materialised (run scf-risk score or monthly)" in said["S2"]
    assert said["S404"].startswith("unknown SME S404: no materialised features and not in")


def test_stored_features_outside_their_domain_are_a_500_not_a_score(
    client: TestClient, headers: Headers
) -> None:
    store: AuditStore = client.app.state.service.store  # type: ignore[attr-defined]
    panel = pd.DataFrame(
        {"sme_id": ["S9"], "as_of": pd.to_datetime(["2024-06-28"]), "ar_90p_share": [1.7]}
    )
    materialize(store, panel)
    body = {"sme_id": "S9", "as_of": "2024-06-30", "allow_sparse": True}
    r = client.post("/v1/scores", json=body, headers=headers("scorer"))
    doc = problem(r, 500)
    assert doc["type"] == "tag:scf-risk,2025:problem:stored-features-invalid"
    assert doc["title"] == "Stored features outside their domain"
    assert "S9 as of 2024-06-28 hold ar_90p_share = 1.7, outside its domain [0, 1]" in doc["detail"]
    (e,) = doc["errors"]
    assert (e["loc"], e["type"], e["value"], e["domain"]) == (
        ["body", "sme_id"],
        "stored_feature_out_of_domain",
        1.7,
        "[0, 1]",
    )
    good = {**OK, "sme_id": "A", "features": {"dso_90d": 10.0}}
    r = client.post("/v1/scores/batch", json=[good, body], headers=headers("scorer"))
    out = r.json()
    assert r.status_code == 200 and (out["scored"], out["failed"]) == (1, 1), r.text
    (item,) = out["errors"]
    assert item["index"] == 1 and item["errors"][0]["type"] == "stored_feature_out_of_domain"
    assert item["errors"][0]["index"] == 1 and item["errors"][0]["domain"] == "[0, 1]"
    assert store.count() == 1  # only the good item was decided


def test_a_batch_with_a_bad_item_scores_the_others(client: TestClient, headers: Headers) -> None:
    items = [
        {**OK, "sme_id": "A", "features": {"dso_90d": 10.0}},
        {**OK, "sme_id": "B", "features": {"ar_90p_share": 7.0}},
        {"sme_id": "C", "features": {}},
        {**OK, "sme_id": "D", "features": {"dso_90d": 30.0}},
    ]
    r = client.post("/v1/scores/batch", json=items, headers=headers("scorer"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["scored"], out["failed"]) == (2, 2)
    assert [x and x["sme_id"] for x in out["results"]] == ["A", None, None, "D"]
    errors = {e["index"]: e for e in out["errors"]}
    assert errors[1]["errors"][0]["loc"] == ["body", 1, "features", "ar_90p_share"]
    assert errors[2]["errors"][0]["loc"] == ["body", 2, "as_of"]
    store: AuditStore = client.app.state.service.store  # type: ignore[attr-defined]
    assert store.count() == 2  # failed items are not recorded
