"""Scores: one SME or a batch, explained and recorded before the answer."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from serving import scoring
from serving.api.deps import Body, SvcDep, parse_body, score_body
from serving.api.errors import responses
from serving.api.keys import Caller
from serving.api.security import SCORE, require
from serving.exceptions import InvalidInput
from serving.schemas import ScoreRequestBase, ScoreResponse

router = APIRouter(tags=["scores"])


@router.post(
    "/v1/scores",
    response_model=ScoreResponse,
    openapi_extra=score_body("ScoreRequest"),
    responses=responses(401, 403, 413, 415, 422, 503),
)
async def post_score(
    caller: Annotated[Caller, Depends(require(*SCORE))], body: Body, svc: SvcDep
) -> dict[str, Any]:
    """Score one SME: PD, score, grade and its top risk drivers; stored before answering."""
    # ``async``: a features-mode score is about a millisecond of CPU, cheaper on the event loop
    # than the two thread-pool hops of a ``def`` route (the call and its response validation).
    # What waits on I/O or runs long goes to the pool: the history pipeline, the materialised
    # features lookup, and the durable audit commit.
    served = svc.holder.get()
    request: ScoreRequestBase = parse_body(served.request_model, body)
    if request.mode == "features":
        decision = scoring.score(served, request)
    else:
        decision = await run_in_threadpool(scoring.score, served, request, latest=svc.online.latest)
    stored = await run_in_threadpool(svc.record, [decision], caller)
    return stored[0]


@router.post(
    "/v1/scores/batch",
    response_model=list[ScoreResponse],
    openapi_extra=score_body("BatchScoreRequest"),
    responses=responses(401, 403, 413, 415, 422, 503),
)
def post_score_batch(
    caller: Annotated[Caller, Depends(require(*SCORE))], body: Body, svc: SvcDep
) -> list[dict[str, Any]]:
    """Score a list of requests, one decision each, stored together before answering."""
    served = svc.holder.get()
    items = parse_body(served.batch_model, body).root
    if not items or len(items) > svc.settings.batch_limit:
        raise InvalidInput(
            (), f"a batch holds 1 to {svc.settings.batch_limit} items, got {len(items)}"
        )
    decisions = scoring.score_many(served, items, latest=svc.online.latest)
    return svc.record(decisions, caller)
