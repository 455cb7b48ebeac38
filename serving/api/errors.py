"""The API layer's one translation of domain errors into HTTP responses.

Bad input -> 422 naming the field (FastAPI's shape: ``{"detail": [{"loc", "msg", "type"}]}``);
nothing loaded or audit store not writable -> 503 (scoring fails closed); unknown decision -> 404.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from features.exceptions import ContractError, ScfRiskError
from serving.exceptions import (
    AuditUnavailable,
    DecisionNotFound,
    InvalidInput,
    KeysError,
    ModelLoadFailed,
    ModelNotReady,
)

log = logging.getLogger("scf_risk.serving")
RETRY_AFTER_SECONDS = "5"


class ErrorBody(BaseModel):
    """An error the caller can act on, in words."""

    detail: str


class Problem(BaseModel):
    """One invalid input: where (``loc``: body/query/path, then the field's path), what is wrong."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = Field(default=None, description="The offending value (left out when large).")


class ValidationErrorBody(BaseModel):
    """Bad input: every problem found, each naming its field."""

    detail: list[Problem]


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request framing (an invalid Content-Length).",
    401: "Missing or wrong API key (header X-API-Key).",
    403: "The key's role may not do this.",
    404: "No such decision.",
    413: "Request body larger than the configured limit (SCF_RISK_MAX_BODY_BYTES).",
    415: "The body is not declared JSON (Content-Type: application/json).",
    422: "Invalid input; each problem names its field.",
    503: "Not ready: no model loaded, audit store not writable, or keys unusable. No decision "
    "was made; retry after the Retry-After seconds.",
}
HTML = {"text/html": {"schema": {"type": "string"}}}


def responses(
    *codes: int, html: tuple[int, ...] = (), page: bool = False
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI entries of the error responses a route can give: JSON bodies of `ErrorBody`
    or, for 422, `ValidationErrorBody`; the codes in `html` answer with a page. A `page` route
    (an HTML response class) names the JSON media type explicitly, since FastAPI would otherwise
    document its errors as HTML."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": ERROR_DESCRIPTIONS[code]}
        model = ValidationErrorBody if code == 422 else ErrorBody
        if code in html:
            entry["content"] = HTML
        elif page:
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            entry["content"] = {"application/json": {"schema": ref}}
        else:
            entry["model"] = model
        if code == 503:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}
            }
        out[code] = entry
    return out


def error_schemas() -> dict[str, Any]:
    """The JSON schemas of the error bodies, for the OpenAPI document's components."""
    out: dict[str, Any] = {}
    for model in (ErrorBody, ValidationErrorBody):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _safe(value: Any) -> Any:
    """A JSON-safe copy of an error's input (NaN/inf as strings, bytes decoded, others str)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return str(value)


def validation_detail(errors: Any, *, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as a JSON-safe list of {loc, msg, type} (large inputs left out)."""
    out = []
    for err in errors:
        item: dict[str, Any] = {
            "loc": [*prefix, *err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "value_error")),
        }
        value = err.get("input")
        if isinstance(value, bool | int | float | str) or value is None:
            text = _safe(value)
            if not (isinstance(text, str) and len(text) > 200):
                item["input"] = text
        out.append(item)
    return out


def _unprocessable(detail: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=422)


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _unprocessable(validation_detail(exc.errors()))


async def _invalid_input(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    return _unprocessable([{"loc": ["body", *exc.loc], "msg": exc.message, "type": "value_error"}])


async def _contract(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ContractError)
    detail = [
        {
            "loc": [
                "body",
                "history",
                v.table,
                *([v.row - 1] if v.row is not None else []),
                *([v.column] if v.column is not None else []),
            ],
            "msg": v.rule,
            "type": "contract_violation",
            **({"input": v.value} if v.value is not None else {}),
        }
        for v in exc.violations
    ]
    return _unprocessable(detail)


async def _not_ready(_: Request, exc: Exception) -> JSONResponse:
    return _unavailable(f"model not ready: {exc}")


async def _audit_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.error("refusing to decide without an audit record: %s", exc)
    # The reason (which names the database) goes to the log only.
    return _unavailable("audit store unavailable, no decision made; see the server log")


async def _load_failed(_: Request, exc: Exception) -> JSONResponse:
    return _unavailable(str(exc))


async def _keys(_: Request, exc: Exception) -> JSONResponse:
    log.error("API keys unusable: %s", exc)
    return _unavailable("API keys file unusable; see the server log")


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    return _unprocessable([{"loc": ["body"], "msg": str(exc), "type": "value_error"}])


def install(app: FastAPI) -> None:
    """Register the handlers (most specific first; ScfRiskError last as bad input)."""
    from training.exceptions import ModelInputError

    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(ContractError, _contract)
    app.add_exception_handler(ModelNotReady, _not_ready)
    app.add_exception_handler(AuditUnavailable, _audit_unavailable)
    app.add_exception_handler(ModelLoadFailed, _load_failed)
    app.add_exception_handler(KeysError, _keys)
    app.add_exception_handler(DecisionNotFound, _not_found)
    app.add_exception_handler(ModelInputError, _domain)
    app.add_exception_handler(ScfRiskError, _domain)
