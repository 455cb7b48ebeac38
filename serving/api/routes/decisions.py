"""Stored decisions, for auditors: one by id, or an SME's rating path."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from serving.api.deps import DecisionIdPath, SvcDep
from serving.api.errors import responses
from serving.api.keys import Caller
from serving.api.security import READ_DECISIONS, require
from serving.schemas import SME_ID_PATTERN, DecisionList, DecisionRecord

router = APIRouter(tags=["decisions"])


@router.get(
    "/v1/decisions/{decision_id}",
    response_model=DecisionRecord,
    responses=responses(401, 403, 404, 422, 503),
)
def get_decision(
    decision_id: DecisionIdPath,
    _: Annotated[Caller, Depends(require(*READ_DECISIONS))],
    svc: SvcDep,
) -> dict[str, Any]:
    """A stored decision: inputs' hash, every feature and contribution, base points, caller."""
    return svc.store.get(decision_id)


@router.get(
    "/v1/decisions",
    response_model=DecisionList,
    responses=responses(401, 403, 422, 503),
)
def list_decisions(
    sme_id: Annotated[str, Query(pattern=SME_ID_PATTERN)],
    _: Annotated[Caller, Depends(require(*READ_DECISIONS))],
    svc: SvcDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """An SME's decisions, newest first (its rating path)."""
    return {"sme_id": sme_id, "decisions": svc.store.find(sme_id=sme_id, limit=limit)}
