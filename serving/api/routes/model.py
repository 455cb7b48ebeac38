"""The served model's card."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from serving.api.deps import SvcDep
from serving.api.errors import responses
from serving.api.keys import Caller
from serving.api.security import READ_MODEL, require
from serving.schemas import ServedModelInfo

router = APIRouter(tags=["model"])


@router.get("/v1/model", response_model=ServedModelInfo, responses=responses(401, 403, 503))
def get_model(_: Annotated[Caller, Depends(require(*READ_MODEL))], svc: SvcDep) -> dict[str, Any]:
    """The served model: version, training metrics, catalog, score and master scales."""
    served = svc.holder.get()
    card = served.model.describe()
    return {
        **served.info,
        "uri": str(served.loaded.uri),
        "loaded_at": served.loaded_at,
        "explain_method": served.explain_method,
        "metrics": {
            k: float(v) if v is not None and math.isfinite(v) else None
            for k, v in card["metrics"].items()
        },
        "catalog": card["catalog"],
        "scale": card["scale"],
        "master_scale": card["master_scale"],
    }
