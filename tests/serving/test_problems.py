"""Every error of the HTTP API is an RFC 9457 problem details object (application/problem+json),
and the OpenAPI document says so."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from serving.api.app import create_app
from serving.settings import Settings
from tests.support.load import error_text
from tests.support.models import Registry
from tests.support.problems import problem

Headers = Callable[[str], dict[str, str]]
OK = {"sme_id": "S1", "as_of": "2024-06-30", "allow_sparse": True, "features": {}}
INVALID = "tag:scf-risk,2025:problem:invalid-input"


def test_validation_422_lists_each_problem_with_value_and_domain(
    client: TestClient, headers: Headers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scf_risk.serving")
    body = {**OK, "features": {"ar_90p_share": 1.5, "dso_90d": -3.0}, "as_of": "2024-13-01"}
    doc = problem(client.post("/v1/scores", json=body, headers=headers("scorer")), 422)
    assert (doc["type"], doc["title"]) == (INVALID, "Invalid input")
    logged = [m for m in caplog.messages if doc["instance"] in m]
    assert logged == [f"problem {doc['instance']}: 422 POST /v1/scores: {doc['detail']}"]
    assert doc["error_count"] == 3 and doc["detail"].startswith("3 problem(s): body.as_of: ")
    by_loc = {tuple(e["loc"]): e for e in doc["errors"]}
    share = by_loc[("body", "features", "ar_90p_share")]
    assert (share["type"], share["value"], share["domain"]) == ("out_of_domain", 1.5, "[0, 1]")
    assert share["msg"] == "value 1.5 outside the domain [0, 1]" and share["index"] is None
    assert by_loc[("body", "features", "dso_90d")]["domain"] == "[0, 36500]"
    assert by_loc[("body", "as_of")]["domain"] is None


def test_an_all_invalid_batch_is_a_422_whose_errors_keep_their_index(
    client: TestClient, headers: Headers
) -> None:
    items = [{**OK, "features": {"ar_90p_share": 2.0}}, {"sme_id": "S2", "features": {}}]
    doc = problem(client.post("/v1/scores/batch", json=items, headers=headers("scorer")), 422)
    assert doc["type"] == INVALID
    assert [(e["index"], e["loc"]) for e in doc["errors"]] == [
        (0, ["body", 0, "features", "ar_90p_share"]),
        (1, ["body", 1, "as_of"]),
    ]
    assert doc["error_count"] == 2


def test_auth_media_type_not_found_and_size_errors(
    client: TestClient, headers: Headers, keys: dict[str, str]
) -> None:
    missing = problem(client.post("/v1/scores", json=OK), 401)
    assert missing["type"] == "about:blank" and missing["title"] == "Unauthorized"
    assert "X-API-Key" in missing["detail"]
    wrong_role = problem(client.post("/v1/scores", json=OK, headers=headers("auditor")), 403)
    assert wrong_role["title"] == "Forbidden" and "scorer" in wrong_role["detail"]
    text = client.post(
        "/v1/scores", content=b"{}", headers={**headers("scorer"), "Content-Type": "text/plain"}
    )
    assert "Content-Type must be application/json" in problem(text, 415)["detail"]
    gone = client.get(
        "/v1/decisions/00000000-0000-4000-8000-000000000000", headers=headers("auditor")
    )
    assert problem(gone, 404)["detail"].startswith("no decision with id 00000000-")
    assert problem(client.get("/no/such/page"), 404)["title"] == "Not Found"


def test_a_body_over_the_limit_is_a_413_problem(
    settings: Settings, keys: dict[str, str], registry: Registry
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 1000})
    with TestClient(create_app(small, loader=registry)) as c:
        r = c.post(
            "/v1/scores",
            content=b"[" + b" " * 2000 + b"]",
            headers={"X-API-Key": keys["scorer"], "Content-Type": "application/json"},
        )
    doc = problem(r, 413)
    assert doc["title"] == "Request Entity Too Large"
    assert doc["detail"] == "request body of 2002 bytes is larger than the limit of 1000 bytes"


def test_no_model_is_a_503_problem_with_retry_after(
    settings: Settings, keys: dict[str, str], registry: Registry
) -> None:
    registry.fail = "tracking server http://127.0.0.1:9 unreachable"
    with TestClient(create_app(settings, loader=registry)) as c:
        r = c.post("/v1/scores", json=OK, headers={"X-API-Key": keys["scorer"]})
    doc = problem(r, 503)
    assert doc["type"] == "tag:scf-risk,2025:problem:unavailable" and r.headers["retry-after"]
    assert doc["detail"].startswith("model not ready")


@pytest.mark.parametrize(("method", "path"), [("post", "/v1/scores"), ("post", "/v1/scores/batch")])
def test_openapi_documents_the_problem_format(client: TestClient, method: str, path: str) -> None:
    doc = client.get("/openapi.json").json()
    problem_schema = doc["components"]["schemas"]["ProblemDetails"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem_schema["required"])
    assert "errors" in problem_schema["properties"] and "ErrorEntry" in doc["components"]["schemas"]
    responses = doc["paths"][path][method]["responses"]
    for code in ("401", "403", "413", "415", "422", "503"):
        content = responses[code]["content"]
        assert list(content) == ["application/problem+json"], (code, content)
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/ProblemDetails"
        }


def test_the_load_client_reports_a_problem_in_words(client: TestClient, headers: Headers) -> None:
    r = client.post("/v1/scores", json={"sme_id": "S1"}, headers=headers("scorer"))
    doc = problem(r, 422)
    assert error_text(r.content) == f"Invalid input: {doc['detail']}"
    assert error_text(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
