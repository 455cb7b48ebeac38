"""Liveness, readiness and Prometheus metrics (no key needed)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

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
    responses={
        200: {"description": "Prometheus text format.", "content": {"text/plain": {}}},
        401: {"description": "SCF_RISK_METRICS_KEY is set and was not presented."},
    },
)
def metrics(svc: SvcDep, request: Request) -> Response:
    """Prometheus text: requests, latency, decisions by grade, served model. When
    SCF_RISK_METRICS_KEY is set it needs that key (``Authorization: Bearer KEY`` or header
    ``X-Metrics-Key``); otherwise no key."""
    expected = svc.settings.metrics_key
    if expected:
        auth = request.headers.get("authorization", "")
        presented = auth[7:] if auth.lower().startswith("bearer ") else ""
        presented = presented or request.headers.get("x-metrics-key", "")
        if not secrets.compare_digest(presented.encode(), expected.encode()):
            raise HTTPException(
                status_code=401,
                detail="metrics need the metrics key (Authorization: Bearer or X-Metrics-Key)",
                headers={"WWW-Authenticate": "Bearer"},
            )
    content, media_type = svc.metrics.render()
    return Response(content=content, media_type=media_type)
