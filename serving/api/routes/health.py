"""Liveness, readiness and Prometheus metrics (no key needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from serving.api.deps import SvcDep
from serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up (no key needed)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready (the body says why)."}},
)
def readyz(svc: SvcDep, response: Response) -> dict[str, Any]:
    """Ready when a model is loaded and the audit store is writable (no key needed)."""
    status = svc.readiness()
    if not status["ready"]:
        response.status_code = 503
    return status


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
)
def metrics(svc: SvcDep) -> Response:
    """Prometheus text: requests, latency, decisions by grade, served model."""
    content, media_type = svc.metrics.render()
    return Response(content=content, media_type=media_type)
