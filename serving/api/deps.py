"""Typed dependencies of the routes: the running service, the raw body, and body parsing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from serving.api.service import Service
from serving.schemas import DECISION_ID_PATTERN

DecisionIdPath = Annotated[str, Path(pattern=DECISION_ID_PATTERN, description="A decision's UUID.")]


def app_service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


async def service(request: Request) -> Service:
    """The app's service as a dependency (``async``: an attribute read is not worth the thread
    pool hop FastAPI makes for a plain ``def`` dependency)."""
    return app_service(request)


JSON_MEDIA_TYPE = "application/json"


async def raw_body(request: Request) -> bytes:
    """The request body, read once (validated by the served model's generated schema); 415
    unless it is declared JSON (a form or text/plain body is what a cross-site page can send
    without a CORS preflight)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise HTTPException(
            status_code=415,
            detail=f"Content-Type must be {JSON_MEDIA_TYPE}, got {media_type or 'none'}",
        )
    return await request.body()


def parse_body(model: Any, body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [
            {**err, "loc": ("body", *err.get("loc", ()))} for err in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors, body=None) from None


def score_body(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


SvcDep = Annotated[Service, Depends(service)]
Body = Annotated[bytes, Depends(raw_body)]
