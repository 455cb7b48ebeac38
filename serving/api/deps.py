"""Typed dependencies of the routes: the running service, the raw body, and body parsing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
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


async def raw_body(request: Request) -> bytes:
    """The request body, read once (validated by the served model's generated schema)."""
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
