"""Reading the service's error answers: RFC 9457 problem details."""

from __future__ import annotations

from typing import Any, Protocol

PROBLEM_MEMBERS = ("type", "title", "status", "detail", "instance")


class Answer(Protocol):
    """What httpx and the TestClient answer alike."""

    status_code: int
    headers: Any
    text: str

    def json(self) -> Any: ...


def problem(response: Answer, status: int) -> dict[str, Any]:
    """The problem details of an error answer, after checking its status, media type and
    members (``detail`` a sentence; invalid input lists its ``errors`` with their total)."""
    assert response.status_code == status, (response.status_code, response.text)
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    assert media_type == "application/problem+json", (media_type, response.text)
    body: dict[str, Any] = response.json()
    assert all(k in body for k in PROBLEM_MEMBERS), body
    assert body["status"] == status and isinstance(body["detail"], str) and body["detail"], body
    assert body["instance"].startswith("urn:uuid:"), body  # an occurrence id, never the path
    if "errors" in body:
        assert body["error_count"] >= len(body["errors"]) >= 1, body
        for e in body["errors"]:
            assert set(e) == {"loc", "msg", "type", "index", "value", "domain"}, e
    return body


def problems(response: Answer, status: int = 422) -> list[dict[str, Any]]:
    """The error entries of an invalid-input answer."""
    return list(problem(response, status)["errors"])
