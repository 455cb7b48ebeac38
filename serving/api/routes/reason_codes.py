"""The reason codes of the served model's catalog, with their sentences."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from features.catalog import all_reason_codes
from serving.api.deps import SvcDep
from serving.api.errors import responses
from serving.api.keys import Caller
from serving.api.security import READ_MODEL, require
from serving.schemas import ReasonCodeInfo

router = APIRouter(tags=["model"])


@router.get(
    "/v1/reason-codes",
    response_model=list[ReasonCodeInfo],
    responses=responses(401, 403, 503),
)
def get_reason_codes(
    _: Annotated[Caller, Depends(require(*READ_MODEL))], svc: SvcDep
) -> list[dict[str, Any]]:
    """Every reason code of the served model's features (HIGH, LOW or CATEGORY, and MISSING),
    with its sentence template."""
    served = svc.holder.get()
    return [asdict(rc) for rc in all_reason_codes(served.model.catalog)]
