"""Administration: swap to the current champion."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from serving.api.deps import SvcDep
from serving.api.errors import responses
from serving.api.keys import Caller
from serving.api.security import ADMIN, require
from serving.exceptions import ModelLoadFailed
from serving.schemas import ReloadResponse

router = APIRouter(tags=["admin"])


@router.post(
    "/v1/admin/reload",
    response_model=ReloadResponse,
    responses=responses(401, 403, 413, 503),
)
def reload_model(
    caller: Annotated[Caller, Depends(require(*ADMIN))], svc: SvcDep
) -> dict[str, Any]:
    """Load the current champion and swap it in; on failure keep serving the old model."""
    previous = svc.holder.current
    try:
        served = svc.reload(by=f"admin reload, key {caller.key_id} ({caller.name})")
    except ModelLoadFailed as exc:
        kept = previous.exact_uri if previous is not None else "no model"
        raise ModelLoadFailed(f"{exc}; still serving {kept}") from exc
    return {
        "reloaded": True,
        "previous": previous.info if previous is not None else None,
        "model": served.info,
    }
