"""The API layer's one translation of domain errors into HTTP responses: RFC 9457 problem details.

Every error answers ``application/problem+json`` with ``type``, ``title``, ``status``, ``detail``
(a sentence), ``instance`` (an id of this occurrence, logged with the request's path) and, for
invalid input, ``errors`` (each problem with its field) and ``error_count``. Bad input -> 422
naming the field; stored features outside their domain -> 500 (the service's data, not the
request); nothing loaded, audit store not writable or keys unusable -> 503 (scoring fails
closed); unknown decision -> 404.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.exceptions import ContractError, ScfRiskError
from serving.exceptions import (
    AuditUnavailable,
    BatchRefused,
    DecisionNotFound,
    KeysError,
    ModelLoadFailed,
    ModelNotReady,
    StoredFeaturesInvalid,
    Unscorable,
)
from serving.schemas import ErrorEntry

log = logging.getLogger("scf_risk.serving")
RETRY_AFTER_SECONDS = "5"
PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_PREFIX = "tag:scf-risk,2025:problem:"
MAX_ERRORS = 100
"""The most error entries one answer lists (``error_count`` says how many there were)."""
SUMMARISED = 3
"""How many problems the ``detail`` sentence names before "and N more"."""


@dataclass(frozen=True)
class ProblemType:
    """A kind of error with its own ``type`` URI (`slug`), or ``about:blank`` (no slug) when
    the HTTP status says it all; `about` is what the README and the OpenAPI document say."""

    status: int
    title: str
    about: str
    slug: str | None = None

    @property
    def uri(self) -> str:
        return "about:blank" if self.slug is None else PROBLEM_TYPE_PREFIX + self.slug


INVALID_INPUT = ProblemType(
    422,
    "Invalid input",
    "The request breaks the scoring contract (schema, a value outside its domain, coverage, "
    "stale or missing materialised features, history rows): `errors` names each problem's "
    "field. Nothing was scored or recorded.",
    "invalid-input",
)
STORED_FEATURES_INVALID = ProblemType(
    500,
    "Stored features outside their domain",
    "The SME's materialised features (sme_id-only mode) hold a value outside its catalog "
    "domain: the service's online feature table is wrong, not the request. No decision was "
    "made; materialise the features again (scf-risk score or monthly) or send features or "
    "history.",
    "stored-features-invalid",
)
UNAVAILABLE = ProblemType(
    503,
    "Service unavailable",
    "No model loaded, audit store not writable, or API keys unusable. No decision was made; "
    "retry after the Retry-After seconds.",
    "unavailable",
)
PROBLEM_TYPES = (INVALID_INPUT, STORED_FEATURES_INVALID, UNAVAILABLE)
"""The problem types of our own; any other error is ``about:blank`` titled by its status."""

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request framing (an invalid Content-Length).",
    401: "Missing or wrong API key (header X-API-Key).",
    403: "The key's role may not do this.",
    404: "No such decision.",
    413: "Request body larger than the configured limit (SCF_RISK_MAX_BODY_BYTES).",
    415: "The body is not declared JSON (Content-Type: application/json).",
    **{t.status: f"{t.title} ({t.uri}): {t.about}" for t in PROBLEM_TYPES},
}
HTML = {"text/html": {"schema": {"type": "string"}}}


class ProblemDetails(BaseModel):
    """An error (RFC 9457, media type application/problem+json)."""

    type: str = Field(
        description="The problem type: about:blank (the status says it all) or one of "
        + ", ".join(t.uri for t in PROBLEM_TYPES)
    )
    title: str = Field(description="The problem type in words.")
    status: int
    detail: str = Field(description="This occurrence in words.")
    instance: str = Field(
        description="This occurrence's id (urn:uuid:...), logged by the service with the "
        "request's method and path."
    )
    errors: list[ErrorEntry] | None = Field(
        default=None, description="Invalid input: each problem with its field (capped)."
    )
    error_count: int | None = Field(default=None, description="Invalid input: problems in all.")


def responses(*codes: int, html: tuple[int, ...] = ()) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the error responses a route can give: `ProblemDetails` bodies or,
    for the codes in `html`, a page."""
    ref = {"$ref": f"#/components/schemas/{ProblemDetails.__name__}"}
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS[code],
            "content": HTML if code in html else {PROBLEM_JSON: {"schema": ref}},
        }
        if code == 503:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}
            }
        out[code] = entry
    return out


def error_schemas() -> dict[str, Any]:
    """The JSON schemas of the error bodies, for the OpenAPI document's components."""
    schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    out: dict[str, Any] = schema.pop("$defs", {})
    out[ProblemDetails.__name__] = schema
    return out


# -- error entries ------------------------------------------------------------------------------
def _safe(value: Any) -> Any:
    """A JSON-safe copy of an error's value (NaN/inf as strings, bytes decoded, others str)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def entry(
    loc: Sequence[str | int],
    msg: str,
    type: str,
    *,
    value: Any = None,
    domain: str | None = None,
    index: int | None = None,
) -> dict[str, Any]:
    """One error entry (`ErrorEntry`'s shape, every key present); a value that is not a scalar,
    or a text longer than 200 characters, is left out."""
    shown = _safe(value) if isinstance(value, bool | int | float | str | bytes) else None
    if isinstance(shown, str) and len(shown) > 200:
        shown = None
    return {
        "loc": list(loc),
        "msg": msg,
        "type": type,
        "index": index,
        "value": shown,
        "domain": domain,
    }


def validation_entries(
    errors: Iterable[Any], *, prefix: tuple[str | int, ...] = (), index: int | None = None
) -> list[dict[str, Any]]:
    """Pydantic errors as error entries (`prefix` before each location)."""
    return [
        entry(
            [*prefix, *err.get("loc", ())],
            str(err.get("msg", "")),
            str(err.get("type", "value_error")),
            value=err.get("input"),
            domain=(err.get("ctx") or {}).get("domain"),
            index=index,
        )
        for err in errors
    ]


def lone_surrogate_entry(loc: Sequence[str | int], *, index: int | None = None) -> dict[str, Any]:
    """A string (or key) holding a lone surrogate: valid JSON text, but not Unicode."""
    return entry(
        list(loc),
        "Invalid JSON: the string holds a lone surrogate escape (a \\ud800-\\udfff escape "
        "without its pair), which is not Unicode",
        "json_invalid",
        index=index,
    )


def unscorable_entry(exc: Unscorable, *, index: int | None = None) -> dict[str, Any]:
    """A domain error that stopped one request (or batch item) as an error entry."""
    return entry(
        ["body", *exc.loc], exc.message, exc.kind, value=exc.value, domain=exc.domain, index=index
    )


def contract_entries(exc: ContractError) -> list[dict[str, Any]]:
    """History rows breaking the data contract, one entry per violation."""
    return [
        entry(
            [
                "body",
                "history",
                v.table,
                *([v.row - 1] if v.row is not None else []),
                *([v.column] if v.column is not None else []),
            ],
            v.rule,
            "contract_violation",
            value=v.value,
        )
        for v in exc.violations
    ]


# -- problem details ----------------------------------------------------------------------------
def problem_body(
    status: int,
    detail: str,
    where: str,
    kind: ProblemType | None = None,
    *,
    errors: Sequence[dict[str, Any]] | None = None,
    error_count: int | None = None,
) -> dict[str, Any]:
    """A problem details object (`kind` None: ``about:blank`` titled by the HTTP status) with a
    new occurrence id as ``instance``, logged with `where` (method and path) and the detail: the
    answer never echoes the path (a 403 does not repeat a decision id back)."""
    instance = f"urn:uuid:{uuid.uuid4()}"
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(level, "problem %s: %s %s: %s", instance, status, where, detail)
    body: dict[str, Any] = {
        "type": kind.uri if kind is not None else "about:blank",
        "title": kind.title if kind is not None else HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors is not None:
        body["errors"] = list(errors[:MAX_ERRORS])
        body["error_count"] = len(errors) if error_count is None else error_count
    return body


def summary(errors: Sequence[dict[str, Any]], count: int | None = None) -> str:
    """The ``detail`` of invalid input: the first problems in words, and how many more."""
    count = len(errors) if count is None else count
    named = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:SUMMARISED]]
    head = "; ".join(named)
    if count > len(named):
        head += f"; and {count - len(named)} more"
    return f"{count} problem(s): {head}" if count > 1 else head


def problem(
    request: Request,
    status: int,
    detail: str,
    kind: ProblemType | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **members: Any,
) -> JSONResponse:
    """A problem details response (`members`: `problem_body`'s errors and error_count)."""
    where = f"{request.method} {request.url.path}"
    body = problem_body(status, detail, where, kind, **members)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def invalid(
    request: Request, errors: Sequence[dict[str, Any]], count: int | None = None
) -> JSONResponse:
    """422: the request breaks the contract; each problem names its field."""
    return problem(
        request, 422, summary(errors, count), INVALID_INPUT, errors=errors, error_count=count
    )


# -- handlers -----------------------------------------------------------------------------------
def _unavailable(request: Request, message: str) -> JSONResponse:
    return problem(request, 503, message, UNAVAILABLE, headers={"Retry-After": RETRY_AFTER_SECONDS})


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return invalid(request, validation_entries(exc.errors()))


async def _unscorable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unscorable)
    return invalid(request, [unscorable_entry(exc)])


async def _stored_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoredFeaturesInvalid)
    found = unscorable_entry(exc)
    return problem(
        request, 500, exc.message, STORED_FEATURES_INVALID, errors=[found], error_count=1
    )


async def _batch_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BatchRefused)
    return invalid(request, exc.errors, exc.count)


async def _contract(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ContractError)
    return invalid(request, contract_entries(exc), exc.total)


async def _not_ready(request: Request, exc: Exception) -> JSONResponse:
    return _unavailable(request, f"model not ready: {exc}")


async def _audit_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.error("refusing to decide without an audit record: %s", exc)
    # The reason (which names the database) goes to the log only.
    return _unavailable(request, "audit store unavailable, no decision made; see the server log")


async def _load_failed(request: Request, exc: Exception) -> JSONResponse:
    return _unavailable(request, str(exc))


async def _keys(request: Request, exc: Exception) -> JSONResponse:
    log.error("API keys unusable: %s", exc)
    return _unavailable(request, "API keys file unusable; see the server log")


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem(request, 404, str(exc))


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    return invalid(request, [entry(["body"], str(exc), "value_error")])


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(request, exc.status_code, str(exc.detail), headers=exc.headers)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the exception with its traceback; the caller learns nothing of it.
    return problem(request, 500, "internal error, no decision made; see the server log")


def install(app: FastAPI) -> None:
    """Register the handlers (a subclass's own handler wins; ScfRiskError last as bad input)."""
    from training.exceptions import ModelInputError

    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Unscorable, _unscorable)
    app.add_exception_handler(StoredFeaturesInvalid, _stored_invalid)
    app.add_exception_handler(BatchRefused, _batch_refused)
    app.add_exception_handler(ContractError, _contract)
    app.add_exception_handler(ModelNotReady, _not_ready)
    app.add_exception_handler(AuditUnavailable, _audit_unavailable)
    app.add_exception_handler(ModelLoadFailed, _load_failed)
    app.add_exception_handler(KeysError, _keys)
    app.add_exception_handler(DecisionNotFound, _not_found)
    app.add_exception_handler(ModelInputError, _domain)
    app.add_exception_handler(ScfRiskError, _domain)
    app.add_exception_handler(Exception, _internal)
