"""The HTTP API through FastAPI's TestClient: roles, validation, limits, reload, health, metrics."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from serving import scoring
from serving.api.app import create_app
from serving.audit.store import AuditStore
from serving.schemas import ScoreResponse, response_json
from serving.settings import Settings
from tests.support.models import Registry
from tests.support.problems import problems
from tests.support.requests import SPARSE_FEATURES, typed
from training.model import ScoringModel

Headers = Callable[[str], dict[str, str]]
ROLES = ("scorer", "auditor", "admin")
FEATURES = SPARSE_FEATURES


def score_one(client: TestClient, headers: Headers, **body: Any) -> dict[str, Any]:
    payload = {
        "sme_id": "S1",
        "as_of": "2024-06-30",
        "allow_sparse": True,
        "features": FEATURES,
        **body,
    }
    r = client.post("/v1/scores", json=payload, headers=headers("scorer"))
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- the role matrix -------------------------------------------------------------------------------
def endpoints(decision_id: str) -> list[tuple[str, str, Any, tuple[str, ...]]]:
    """(method, path, json body, roles allowed) of every endpoint that needs a key."""
    one = {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": FEATURES}
    return [
        ("POST", "/v1/scores", one, ("scorer",)),
        ("POST", "/v1/scores/batch", [one, one], ("scorer",)),
        ("GET", f"/v1/decisions/{decision_id}", None, ("auditor", "admin")),
        ("GET", "/v1/decisions?sme_id=S1&limit=5", None, ("auditor", "admin")),
        ("GET", f"/audit/decisions/{decision_id}", None, ("auditor", "admin")),
        ("GET", "/audit/decisions?sme_id=S1", None, ("auditor", "admin")),
        ("GET", "/v1/model", None, ("scorer", "auditor", "admin")),
        ("POST", "/v1/admin/reload", None, ("admin",)),
    ]


def test_role_matrix(client: TestClient, headers: Headers) -> None:
    decision_id = score_one(client, headers)["decision_id"]
    wrong = {"X-API-Key": "scfk_0123456789abcdef_" + "x" * 43}
    seen = 0
    for method, path, body, allowed in endpoints(decision_id):
        for label, hdrs in (("no key", {}), ("wrong key", wrong)):
            r = client.request(method, path, json=body, headers=hdrs)
            assert r.status_code == 401, (method, path, label, r.status_code)
        for role in ROLES:
            r = client.request(method, path, json=body, headers=headers(role))
            expected = 200 if role in allowed else 403
            assert r.status_code == expected, (method, path, role, r.status_code, r.text[:200])
            seen += 1
    assert seen == 24
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_score_response_and_stored_decision(client: TestClient, headers: Headers) -> None:
    resp = score_one(client, headers, as_of="2024-06-30")
    assert resp["as_of"] == "2024-06-30" and resp["mode"] == "features"
    assert set(resp) >= {"decision_id", "sme_id", "pd", "score", "grade", "reasons", "model"}
    assert resp["model"] == {"name": "sme-default-pd", "version": "1", "run_id": "run1"}
    stored = client.get(f"/v1/decisions/{resp['decision_id']}", headers=headers("auditor")).json()
    for key in ("pd", "score", "grade", "reasons", "base_points", "model", "sme_id"):
        assert stored[key] == resp[key], key
    assert stored["caller"]["role"] == "scorer" and "key" not in str(stored["caller"]).lower()[:0]
    assert stored["features"]["dso_90d"] == 42.5 and stored["features"]["industry"] == "food"
    assert (
        abs(stored["base_points"] + sum(stored["contributions"].values()) - stored["score"]) < 1e-6
    )
    listed = client.get("/v1/decisions?sme_id=S1", headers=headers("auditor")).json()
    assert [d["decision_id"] for d in listed["decisions"]] == [resp["decision_id"]]


def test_the_score_answer_is_the_response_model_of_the_stored_decision(
    client: TestClient, headers: Headers, keys: dict[str, str]
) -> None:
    """The single score's answer skips FastAPI's response validation (`response_json`): it must
    be exactly what ScoreResponse makes of the stored payload, key order included."""
    svc = client.app.state.service  # type: ignore[attr-defined]
    served = svc.holder.get()
    caller = svc.keys.authenticate(keys["scorer"])
    adapter = TypeAdapter(ScoreResponse)
    bodies = [
        {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": FEATURES},
        {"sme_id": "S2", "as_of": "2024-06-30", "allow_sparse": True, "features": {}},
        {
            "sme_id": "S3",
            "as_of": "2024-06-30",
            "allow_sparse": True,
            "features": {
                "dso_90d": 1e-5,
                "ar_90p_share": 0.0,
                "ar_open_amount": 250.0,
                "industry": "metals",
            },
        },
    ]
    for body in bodies:
        request = served.request_model.model_validate_json(json.dumps(body))
        payload = svc.record([scoring.score(served, request, raw=body)], caller)[0]
        fast = response_json(ScoreResponse, payload)
        slow = adapter.dump_json(adapter.validate_python(payload), by_alias=True)
        assert list(json.loads(fast)) == list(json.loads(slow))
        assert typed(json.loads(fast)) == typed(json.loads(slow)), body
    over_http = score_one(client, headers)
    assert list(over_http) == list(ScoreResponse.model_fields)
    assert ScoreResponse.model_validate(over_http).receipt is not None


def test_concurrent_records_share_a_transaction_and_are_each_durable(
    client: TestClient, keys: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Service.record` (the batch route, on its threads) goes through the store's group commit:
    the callers that queue while a commit waits for the write lock share one transaction, each
    gets its own records back, every one of them durable and the chain intact."""
    svc = client.app.state.service  # type: ignore[attr-defined]
    store: AuditStore = svc.store
    served = svc.holder.get()
    caller = svc.keys.authenticate(keys["scorer"])
    raws = [
        {"sme_id": f"S{k}", "as_of": "2024-06-30", "allow_sparse": True, "features": FEATURES}
        for k in range(6)
    ]
    decisions = [
        scoring.score(served, served.request_model.model_validate_json(json.dumps(raw)), raw=raw)
        for raw in raws
    ]
    before = store.count()
    original = store._commit_group
    sizes: list[int] = []

    def counted(gather: Callable[[], list[Any]]) -> None:
        def gather_and_count() -> list[Any]:
            group = gather()
            sizes.append(len(group))
            return group

        original(gather_and_count)

    monkeypatch.setattr(store, "_commit_group", counted)
    results: list[list[dict[str, Any]]] = [[] for _ in decisions]
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            results[k] = svc.record([decisions[k]], caller)
        except BaseException as exc:  # collected and checked by the test thread
            errors.append(exc)

    blocker = sqlite3.connect(settings.audit_db.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another worker's commit holds the database
    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(decisions))]
    try:
        for th in threads:
            th.start()
        deadline = time.monotonic() + 10
        while len(store._queue) < len(threads) and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    for th in threads:
        th.join(30)
    assert not errors
    assert sizes == [len(threads)]  # one transaction for all of them
    for raw, (stored,) in zip(raws, results, strict=True):
        assert stored["sme_id"] == raw["sme_id"]
        stored.pop("receipt", None)  # the caller's proof, not part of the stored record
        assert store.get(str(stored["decision_id"])) == stored
    assert store.count() == before + len(threads)
    assert store.verify().ok


def test_batch_scores_one_decision_per_item(client: TestClient, headers: Headers) -> None:
    items = [
        {
            "sme_id": f"S{i}",
            "as_of": "2024-06-30",
            "allow_sparse": True,
            "features": {"dso_90d": float(i)},
        }
        for i in range(5)
    ]
    r = client.post("/v1/scores/batch", json=items, headers=headers("scorer"))
    assert r.status_code == 200
    assert (r.json()["scored"], r.json()["failed"], r.json()["errors"]) == (5, 0, [])
    out = r.json()["results"]
    assert [d["sme_id"] for d in out] == [f"S{i}" for i in range(5)]
    assert len({d["decision_id"] for d in out}) == 5
    store: AuditStore = client.app.state.service.store  # type: ignore[attr-defined]
    assert store.count() == 5 and store.verify().ok


def test_a_batch_with_a_bad_item_scores_the_others_as_an_all_valid_batch(
    client: TestClient, headers: Headers
) -> None:
    """An all-valid batch is validated as one list, a batch with a bad item item by item: the
    valid items get the same decisions either way."""
    items = [
        {"sme_id": f"V{i}", "as_of": "2024-06-30", "allow_sparse": True, "features": {"dso_90d": i}}
        for i in range(3)
    ]
    bad = {"sme_id": "X", "as_of": "2024-06-30", "features": {"dso_90d": "abc"}}
    whole = client.post("/v1/scores/batch", json=items, headers=headers("scorer")).json()
    mixed = client.post("/v1/scores/batch", json=[bad, *items], headers=headers("scorer")).json()
    assert (whole["scored"], mixed["scored"], mixed["failed"]) == (3, 3, 1)
    assert mixed["errors"][0]["index"] == 0 and mixed["results"][0] is None
    same = ("sme_id", "pd", "score", "grade", "base_points", "coverage", "reasons", "improvement")
    for a, b in zip(whole["results"], mixed["results"][1:], strict=True):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}


# -- bad input: 422 naming the field, never a 500 --------------------------------------------------
F = ["body", "features"]
LOAN = (
    '{"loan_id":"l","sme_id":"S1","product":"p","disbursed_date":"2024-01-01",'
    '"maturity_date":"2024-02-01","amount":NaN}'
)
BAD_BODIES: list[tuple[str, str, list[Any]]] = [
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"nope":1}}',
        "unknown feature",
        [*F, "nope"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"dso_90d":"abc"}}',
        "wrong type",
        [*F, "dso_90d"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"dso_90d":true}}',
        "bool as number",
        [*F, "dso_90d"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"industry":3}}',
        "number as category",
        [*F, "industry"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"dso_90d":NaN}}',
        "NaN",
        [*F, "dso_90d"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"dso_90d":Infinity}}',
        "inf",
        [*F, "dso_90d"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"dso_90d":-1e999}}',
        "overflow",
        [*F, "dso_90d"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"dso_90d":1'
        + "0" * 400
        + "}}",
        "integer beyond float",
        [*F, "dso_90d"],
    ),
    ('{"sme_id":"S1","as_of":"2024-02-30","features":{}}', "bad date", ["body", "as_of"]),
    ('{"sme_id":"S1","as_of":"yesterday","features":{}}', "not a date", ["body", "as_of"]),
    ('{"sme_id":"S1","as_of":1700000000,"features":{}}', "number date", ["body", "as_of"]),
    ('{"sme_id":"S1","as_of":"2999-01-01","features":{}}', "future as_of", ["body", "as_of"]),
    (
        '{"sme_id":"../../etc/passwd","as_of":"2024-06-30","allow_sparse":true,"features":{}}',
        "path traversal id",
        ["body", "sme_id"],
    ),
    (
        '{"sme_id":"S1\' OR 1=1 --","as_of":"2024-06-30","allow_sparse":true,"features":{}}',
        "SQL id",
        ["body", "sme_id"],
    ),
    ('{"features":{}}', "missing sme_id", ["body", "sme_id"]),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{},"history":{}}',
        "both modes",
        ["body"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"extra":1}',
        "unknown field",
        ["body", "extra"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"history":{"invoices":[{"invoice_id":"i1"}]}}',
        "history row",
        ["body", "history", "invoices", 0, "seller_id"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"history":{"loans":['
        + LOAN
        + "]}}",
        "history NaN",
        ["body", "history", "loans", 0, "amount"],
    ),
    (
        '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":',
        "truncated JSON",
        ["body"],
    ),
    ("", "empty body", ["body"]),
    ("[]", "not an object", ["body"]),
]


@pytest.mark.parametrize(("body", "case", "loc"), BAD_BODIES, ids=[c for _, c, _ in BAD_BODIES])
def test_bad_requests_get_422_naming_the_field(
    client: TestClient, headers: Headers, body: str, case: str, loc: list[Any]
) -> None:
    r = client.post(
        "/v1/scores",
        content=body,
        headers={**headers("scorer"), "Content-Type": "application/json"},
    )
    errors = problems(r)
    assert any(d["loc"][: len(loc)] == loc for d in errors), (case, errors)


ONE = {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": FEATURES}
ENCODINGS: list[tuple[str, Callable[[str], bytes]]] = [
    ("utf-8 with a byte order mark", lambda text: b"\xef\xbb\xbf" + text.encode()),
    ("utf-16", lambda text: text.encode("utf-16-le")),
    ("utf-32", lambda text: text.encode("utf-32")),
]


@pytest.mark.parametrize(("case", "encode"), ENCODINGS, ids=[c for c, _ in ENCODINGS])
def test_both_routes_read_only_utf8_without_a_byte_order_mark(
    client: TestClient, headers: Headers, case: str, encode: Callable[[str], bytes]
) -> None:
    """The single route's parser reads UTF-8 only; the batch route used to read the body with
    json, which also takes a BOM, UTF-16 and UTF-32, so the same bytes were refused one at a
    time and scored in a batch."""
    h = {**headers("scorer"), "Content-Type": "application/json"}
    store: AuditStore = client.app.state.service.store  # type: ignore[attr-defined]
    one = client.post("/v1/scores", content=encode(json.dumps(ONE)), headers=h)
    batch = client.post("/v1/scores/batch", content=encode(json.dumps([ONE, ONE])), headers=h)
    assert (one.status_code, batch.status_code) == (422, 422), (case, batch.text)
    assert problems(batch)[0]["loc"] == ["body"] and store.count() == 0


def test_a_batch_item_with_a_lone_surrogate_is_refused_at_its_own_field(
    client: TestClient, headers: Headers
) -> None:
    """An escaped lone surrogate is valid JSON text but not Unicode: the single route refuses the
    body; in a batch, the item gets an error located at its own field (not in a re-serialised
    copy of it) and the other items are scored."""
    h = {**headers("scorer"), "Content-Type": "application/json"}
    bad = {**ONE, "features": {**FEATURES, "industry": "fo\ud800od"}}
    keyed = {**ONE, "features": {"dé\udfff": 1.0}}
    single = client.post("/v1/scores", content=json.dumps(bad), headers=h)
    assert single.status_code == 422 and problems(single)[0]["type"] == "json_invalid"
    r = client.post("/v1/scores/batch", content=json.dumps([ONE, bad, keyed]), headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["scored"], out["failed"]) == (1, 2)
    errors = {item["index"]: item["errors"][0] for item in out["errors"]}
    assert errors[1]["loc"] == ["body", 1, "features", "industry"]
    assert errors[2]["loc"] == ["body", 2, "features", "dé\\udfff"]
    assert {e["type"] for e in errors.values()} == {"json_invalid"}
    assert "lone surrogate" in errors[1]["msg"]


def test_history_without_reference_data_is_a_clear_422(
    client: TestClient, headers: Headers
) -> None:
    body = {
        "sme_id": "S1",
        "as_of": "2024-06-30",
        "history": {"invoices": []},
    }
    r = client.post("/v1/scores", json=body, headers=headers("scorer"))
    assert "reference data" in problems(r)[0]["msg"]


def test_no_materialised_features_is_a_clear_422(client: TestClient, headers: Headers) -> None:
    r = client.post(
        "/v1/scores",
        json={"sme_id": "S404", "as_of": "2024-06-30", "allow_sparse": True},
        headers=headers("scorer"),
    )
    assert problems(r)[0]["loc"] == ["body", "sme_id"]


def test_ids_and_queries_are_validated(client: TestClient, headers: Headers) -> None:
    aud = headers("auditor")
    for path in (
        "/v1/decisions/not-a-uuid",
        "/v1/decisions/1%27%20OR%20%271%27=%271",
        "/v1/decisions/..%2F..%2Fetc%2Fpasswd",
        "/v1/decisions?sme_id=S1;DROP%20TABLE%20decisions",
        "/v1/decisions?sme_id=S1&limit=0",
        "/v1/decisions?sme_id=S1&limit=100000",
        "/audit/decisions?grade=%3Cscript%3E",
    ):
        r = client.get(path, headers=aud)
        assert r.status_code in (404, 422), (path, r.status_code)
    r = client.get("/v1/decisions/00000000-0000-4000-8000-000000000000", headers=aud)
    assert r.status_code == 404


def test_batch_limits(
    tmp_path: Path, keys: dict[str, str], registry: Registry, settings: Settings
) -> None:
    small = settings.model_copy(update={"batch_limit": 3})
    with TestClient(create_app(small, loader=registry)) as c:
        h = {"X-API-Key": keys["scorer"]}
        item = {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": {}}
        assert c.post("/v1/scores/batch", json=[item] * 3, headers=h).status_code == 200
        over = c.post("/v1/scores/batch", json=[item] * 4, headers=h)
        assert over.status_code == 422 and "1 to 3 items" in over.text
        assert c.post("/v1/scores/batch", json=[], headers=h).status_code == 422
        bad = c.post(
            "/v1/scores/batch",
            json=[
                item,
                {"sme_id": "S2", "as_of": "2024-06-30", "allow_sparse": True, "features": {"x": 1}},
            ],
            headers=h,
        )
        assert bad.status_code == 200  # the good item is scored, the bad one has its error
        out = bad.json()
        assert (out["scored"], out["failed"]) == (1, 1) and out["results"][1] is None
        assert out["errors"][0]["index"] == 1
        assert out["errors"][0]["errors"][0]["loc"] == ["body", 1, "features", "x"]


def test_body_size_limit_gives_413(
    keys: dict[str, str], registry: Registry, settings: Settings
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2000})
    with TestClient(create_app(small, loader=registry)) as c:
        h = {"X-API-Key": keys["scorer"], "Content-Type": "application/json"}
        big = (
            '{"sme_id":"S1","as_of":"2024-06-30","allow_sparse":true,"features":{"industry":"'
            + "x" * 5000
            + '"}}'
        )
        r = c.post("/v1/scores", content=big, headers=h)
        assert r.status_code == 413 and "limit of 2000 bytes" in r.text

        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/scores", content=chunks(), headers=h)  # chunked, no Content-Length
        assert r.status_code == 413
        assert (
            c.post(
                "/v1/scores",
                json={"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": {}},
                headers=h,
            ).status_code
            == 200
        )


# -- the model: reload, not ready, metadata --------------------------------------------------------
def test_model_endpoint_describes_the_served_model(client: TestClient, headers: Headers) -> None:
    info = client.get("/v1/model", headers=headers("scorer")).json()
    assert info["version"] == "1" and info["explain_method"] == "fast"
    assert info["metrics"]["auc_oot"] == 0.75
    assert {f["name"] for f in info["catalog"]} >= {"dso_90d", "industry"}
    assert info["scale"]["pdo"] == 20.0 and len(info["master_scale"]["grades"]) >= 10


def test_reload_swaps_the_model_and_a_failed_load_keeps_it(
    client: TestClient, headers: Headers, registry: Registry, scoring_model_v2: ScoringModel
) -> None:
    before = score_one(client, headers)
    registry.add(scoring_model_v2)
    r = client.post("/v1/admin/reload", headers=headers("admin"))
    assert r.status_code == 200
    assert r.json()["previous"]["version"] == "1" and r.json()["model"]["version"] == "2"
    after = score_one(client, headers)
    assert after["model"]["version"] == "2" and after["score"] != before["score"]
    registry.fail = "artifact booster.txt is corrupt"
    r = client.post("/v1/admin/reload", headers=headers("admin"))
    assert r.status_code == 503
    assert "corrupt" in r.text and "still serving models:/sme-default-pd/2" in r.text
    assert score_one(client, headers)["model"]["version"] == "2"


def test_registry_unreachable_at_start_means_not_ready_then_recovers(
    settings: Settings, keys: dict[str, str], registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.fail = "tracking server http://127.0.0.1:9 unreachable"
    caplog.set_level(logging.ERROR, logger="scf_risk.serving")
    with TestClient(create_app(settings, loader=registry)) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert "unreachable" in r.json()["model_error"]
        assert any("model not loaded at start" in m and "unreachable" in m for m in caplog.messages)
        s = c.post(
            "/v1/scores",
            json={"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": {}},
            headers={"X-API-Key": keys["scorer"]},
        )
        assert s.status_code == 503
        registry.fail = None
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/readyz").json()["ready"] is True


def test_audit_store_not_writable_fails_closed_and_recovers(
    settings: Settings, keys: dict[str, str], registry: Registry, tmp_path: Path
) -> None:
    db = tmp_path / "audit.db"
    store = AuditStore(f"sqlite:///{db}", lock_timeout=0.3)
    h = {"X-API-Key": keys["scorer"]}
    body = {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": {}}
    with TestClient(create_app(settings, loader=registry, store=store)) as c:
        assert c.post("/v1/scores", json=body, headers=h).status_code == 200
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            r = c.post("/v1/scores", json=body, headers=h)
            assert r.status_code == 503 and "no decision made" in r.text
            assert c.post("/v1/scores/batch", json=[body], headers=h).status_code == 503
            assert c.get("/readyz").json()["audit_store_writable"] is False
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert c.post("/v1/scores", json=body, headers=h).status_code == 200
        assert c.get("/readyz").status_code == 200
    assert store.count() == 2 and store.verify().ok  # the refused ones left no record


# -- headers, CORS, OpenAPI, metrics -------------------------------------------------------------
def test_security_headers_and_closed_cors(client: TestClient, headers: Headers) -> None:
    r = client.get("/v1/model", headers={**headers("scorer"), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options(
        "/v1/scores",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in pre.headers
    for name, value in (
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ):
        assert r.headers[name] == value


def test_cors_opens_only_to_configured_origins(
    keys: dict[str, str], registry: Registry, settings: Settings
) -> None:
    open_ = settings.model_copy(update={"cors_origins": ["https://lender.example"]})
    with TestClient(create_app(open_, loader=registry)) as c:
        ok = c.options(
            "/v1/scores",
            headers={"Origin": "https://lender.example", "Access-Control-Request-Method": "POST"},
        )
        assert ok.headers.get("access-control-allow-origin") == "https://lender.example"
        bad = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers


def test_openapi_has_the_catalog_generated_request(
    client: TestClient, scoring_model: ScoringModel
) -> None:
    doc = client.get("/openapi.json").json()
    features = doc["components"]["schemas"]["Features"]
    assert features["additionalProperties"] is False
    assert set(features["properties"]) == {f.name for f in scoring_model.catalog}
    industry = features["properties"]["industry"]
    described = next(f for f in scoring_model.catalog if f.name == "industry").description
    assert "string" in str(industry) and described in industry["description"]
    body = doc["paths"]["/v1/scores"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/ScoreRequest"


def test_metrics_count_requests_grades_and_model(client: TestClient, headers: Headers) -> None:
    grade = score_one(client, headers)["grade"]
    client.get("/v1/model", headers=headers("scorer"))
    text = client.get("/metrics").text
    assert f'scf_risk_decisions_total{{grade="{grade}"}} 1.0' in text
    assert 'scf_risk_http_requests_total{method="POST",route="/v1/scores",status="200"} 1.0' in text
    assert (
        'scf_risk_http_request_duration_seconds_bucket{le="0.05",method="POST",route="/v1/scores"}'
        in text
    )
    assert 'scf_risk_model_info{name="sme-default-pd",run_id="run1",version="1"} 1.0' in text


def test_keys_never_appear_in_logs(
    client: TestClient, headers: Headers, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    score_one(client, headers)
    client.get("/v1/model", headers={"X-API-Key": "scfk_wrong"})
    client.post("/audit/login", data={"api_key": keys["auditor"]})
    for key in keys.values():
        assert key not in caplog.text


def test_a_batch_decides_alike_on_numba_threads_and_beside_another_batch(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Service.decide_batch`: a large batch runs its kernels on numba's threads
    (`SCF_RISK_BATCH_THREADS` 2), and a batch arriving while another holds them runs on one
    thread instead of waiting (or of a second parallel launch): the same decisions either way,
    byte for byte."""
    from serving.audit.canonical import canonical_bytes
    from training.treeshap import PARALLEL_MIN_ROWS

    svc = client.app.state.service  # type: ignore[attr-defined]
    monkeypatch.setattr(svc, "settings", svc.settings.model_copy(update={"batch_threads": 2}))
    served = svc.holder.get()
    model = served.model
    numeric = [f.name for f in model.catalog if f.kind != "categorical"][:12]
    rng = np.random.default_rng(4)
    inputs = []
    for k in range(PARALLEL_MIN_ROWS + 44):
        features: dict[str, Any] = {"industry": "food"}
        features.update({n: float(rng.uniform(0, 1)) for n in numeric})
        raw = {"sme_id": f"S{k}", "as_of": "2024-06-30", "allow_sparse": True, "features": features}
        request = served.request_model.model_validate_json(json.dumps(raw))
        inputs.append(scoring.prepare(served, request, None, loc=(k,), raw=raw))
    alone = [canonical_bytes(d.body()) for d in scoring.decide(served, inputs)]
    decide, threads_used = scoring.decide, []

    def spy(*args: Any, threads: int = 1, **kwargs: Any) -> Any:
        threads_used.append(threads)
        return decide(*args, threads=threads, **kwargs)

    monkeypatch.setattr(scoring, "decide", spy)
    assert [canonical_bytes(d.body()) for d in svc.decide_batch(served, inputs)] == alone
    held = threading.Event()
    release = threading.Event()

    def other_batch() -> None:  # another thread's batch holds the kernels' turn
        with svc.parallel:
            held.set()
            release.wait(30)

    other = threading.Thread(target=other_batch)
    other.start()
    try:
        assert held.wait(30)
        beside = [canonical_bytes(d.body()) for d in svc.decide_batch(served, inputs)]
    finally:
        release.set()
        other.join()
    assert beside == alone
    assert threads_used == [2, 1]  # on numba's threads, then on one beside the other batch
    assert len(set(alone)) == len(inputs)
