"""Scores: one SME or a batch, explained and recorded before the answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import RootModel, ValidationError
from starlette.concurrency import run_in_threadpool

from serving import scoring
from serving.api.deps import Body, SvcDep, app_service, parse_body, raw_body, score_body
from serving.api.errors import (
    lone_surrogate_entry,
    responses,
    unscorable_entry,
    validation_entries,
)
from serving.api.keys import Caller
from serving.api.security import HEADER, SCORE, check, require
from serving.api.service import Service
from serving.exceptions import BatchRefused, InvalidInput, Unscorable
from serving.schemas import (
    BatchScoreResponse,
    ScoreRequestBase,
    ScoreResponse,
    batch_response_json,
    response_json,
)

BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "description": "A ScoreRequest (see that schema). Each item is validated "
                        "on its own: an item that breaks it gets its own error in the answer and "
                        "is neither scored nor recorded, while the others are scored.",
                    },
                }
            }
        },
    }
}
"""The batch body as the service validates it: a list whose items are checked one by one (so the
per-item schema belongs to each item's answer, not to the request as a whole)."""

router = APIRouter(tags=["scores"])
MAX_ERRORS_PER_ITEM = 20
MAX_ITEMS_WITH_ERRORS = 100


_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
_NOT_AN_INTEGER_AFTER = frozenset(b".eE")


def _long_integer(body: bytes) -> bool:
    """Whether the body holds a run of 19 or more digits that is not a float's fraction (after
    its point) nor followed by a point or an exponent: an integer literal (or part of a string,
    or a long exponent: read by json too, which is only slower) that may lie beyond the 64 bits
    orjson reads as integers. The runs are found by `bytes.find` on the body with every digit
    made 0 (a regular expression took 0.1 to 0.3 s over a batch of 1,000 SMEs)."""
    flat = body.translate(_AS_ZERO)
    at = flat.find(_LONG_RUN)
    while at != -1:
        end = at + len(_LONG_RUN)
        while end < len(flat) and flat[end] == 0x30:
            end += 1
        fraction = at > 0 and flat[at - 1] == 0x2E  # after "."
        if not fraction and (end == len(flat) or flat[end] not in _NOT_AN_INTEGER_AFTER):
            return True
        at = flat.find(_LONG_RUN, end)
    return False


def _json_items(body: bytes) -> Any:
    """The body as JSON (None when it is not JSON): the standard library's values, read by orjson
    when it gives the same ones. orjson refuses what json accepts (NaN, Infinity, 1e400, escaped
    lone surrogates) and reads integers beyond 64 bits as floats: those bodies, and any with an
    integer of 19 digits or more, go to json. (Floats such as ``-0.0039273441335297005``, 19
    digits after the point, are read alike by both: they stay with orjson.) The body must be
    UTF-8 without a byte order mark, as the single route's parser requires: json would also read
    UTF-16, UTF-32 and a leading BOM from bytes, so it is given the text decoded strictly."""
    if not _long_integer(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body.decode("utf-8"))  # a BOM is then U+FEFF: json refuses it
    except ValueError:  # UnicodeDecodeError included
        return None


def _lone_surrogate(value: Any, at: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where in a JSON value (a batch item as json read it) a string or key holds a lone
    surrogate (an escape such as ``\\ud800`` without its pair: valid JSON text, not Unicode),
    or None. The schema's parser refuses such a body as a whole; an item gets the location of
    its own field instead of one in a re-serialised copy of it."""
    if isinstance(value, str):
        return at if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                return (*at, _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", key))
            found = _lone_surrogate(item, (*at, key))
            if found is not None:
                return found
    if isinstance(value, list):
        for k, item in enumerate(value):
            found = _lone_surrogate(item, (*at, k))
            if found is not None:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _raw(body: bytes) -> Any:
    """What the caller sent, as JSON (the body already passed schema validation): `_json_items`'
    reading, or the text itself when it is not JSON."""
    value = _json_items(body)
    return body.decode("utf-8", "replace") if value is None else value


async def post_score(
    caller: Annotated[Caller, Depends(require(*SCORE))], body: Body, svc: SvcDep
) -> Response:
    """Score one SME: PD, score, grade and its top risk drivers; stored before answering."""
    return await score_one(caller, body, svc)


async def score_one(caller: Caller, body: bytes, svc: Service) -> Response:
    """`post_score`'s work once its caller, body and service are known."""
    # ``async``: a features-mode score is well under a millisecond of CPU, cheaper on the event
    # loop than a thread-pool hop. What waits on I/O or runs long goes to the pool: the history
    # pipeline, the materialised features lookup, and the durable audit commit. The answer is
    # the stored payload projected on ScoreResponse (`response_json`), not validated again.
    served = svc.holder.get()
    request: ScoreRequestBase = parse_body(served.request_model, body)
    limits, raw = svc.limits, _raw(body)
    if request.mode == "features":
        decision = scoring.score(served, request, limits=limits, raw=raw)
    else:
        decision = await run_in_threadpool(
            scoring.score, served, request, latest=svc.online.latest, limits=limits, raw=raw
        )
    stored = await svc.record_async([decision], caller)
    return Response(response_json(ScoreResponse, stored[0]), media_type="application/json")


async def handle_score(request: Request) -> Response:
    """`post_score` as its route runs it: its dependencies resolved here, in FastAPI's order
    (the caller from X-API-Key, then the JSON body, then the service), raising the same errors
    (401, 403, 415, then whatever scoring raises), without FastAPI's per-request resolution of
    the dependency graph (about half of the framework's CPU per request here). The declared
    endpoint stays `post_score`: the OpenAPI document is built from it, unchanged."""
    svc = app_service(request)
    caller = check(svc.keys.authenticate(request.headers.get(HEADER) or None), SCORE)
    body = await raw_body(request)
    return await score_one(caller, body, svc)


class ScoreRoute(APIRoute):
    """The route of ``POST /v1/scores``: `post_score`'s declaration, `handle_score`'s run.
    `handle_score` resolves `post_score`'s own dependencies only, so a route given more (its
    router's ``dependencies=``) is refused when built, and while the app overrides a dependency
    (``app.dependency_overrides``, as tests do) the route runs FastAPI's own handler. (An
    ``include_router(..., dependencies=...)`` would not be seen here: `create_app` passes none.)"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        if self.dependencies:
            raise RuntimeError(
                f"{self.path} resolves its dependencies itself (handle_score): the "
                f"dependencies {self.dependencies!r} declared on its router or app would be "
                "skipped"
            )
        declared = super().get_route_handler()

        async def handler(request: Request) -> Response:
            if request.app.dependency_overrides:
                return await declared(request)
            return await handle_score(request)

        return handler


router.add_api_route(
    "/v1/scores",
    post_score,
    methods=["POST"],
    response_model=ScoreResponse,
    openapi_extra=score_body("ScoreRequest"),
    responses=responses(401, 403, 413, 415, 422, 500, 503),
    route_class_override=ScoreRoute,
)


def _all_valid(batch_model: type[RootModel[Any]], body: bytes) -> list[Any] | None:
    """The batch's requests when every item is valid, in one call of the list's schema (the
    items' own schema); None when any item is not: then each is validated alone, so that it
    gets its own errors."""
    try:
        return list(batch_model.model_validate_json(body).root)
    except ValidationError:
        return None


@router.post(
    "/v1/scores/batch",
    response_model=BatchScoreResponse,
    openapi_extra=BATCH_BODY,
    responses=responses(401, 403, 413, 415, 422, 503),
)
def post_score_batch(
    caller: Annotated[Caller, Depends(require(*SCORE))], body: Body, svc: SvcDep
) -> Response:
    """Score a list of requests: each item gets its own decision or its own error (with its
    index); failed items are neither scored nor recorded. The scored ones are stored together
    before answering."""
    served = svc.holder.get()
    items = _json_items(body)
    if not isinstance(items, list):
        parse_body(served.batch_model, body)  # the schema's own 422 for a body that is no list
        raise InvalidInput((), "expected a JSON list of scoring requests")
    if not items or len(items) > svc.settings.batch_limit:
        raise InvalidInput(
            (), f"a batch holds 1 to {svc.settings.batch_limit} items, got {len(items)}"
        )
    prepared: list[tuple[int, Any]] = []
    failed: dict[int, list[dict[str, Any]]] = {}
    valid = _all_valid(served.batch_model, body)
    limits = svc.limits
    for i, item in enumerate(items):
        surrogate = _lone_surrogate(item) if valid is None else None
        if surrogate is not None:
            failed[i] = [lone_surrogate_entry(("body", i, *surrogate), index=i)]
            continue
        try:
            request = (
                valid[i]
                if valid is not None
                else served.request_model.model_validate_json(json.dumps(item))
            )
            prepared.append(
                (
                    i,
                    scoring.prepare(
                        served,
                        request,
                        svc.online.latest,
                        loc=(i,),
                        limits=limits,
                        raw=item,
                    ),
                )
            )
        except ValidationError as exc:
            failed[i] = validation_entries(
                exc.errors(include_url=False), prefix=("body", i), index=i
            )
        except RequestValidationError as exc:
            failed[i] = validation_entries(exc.errors(), prefix=("body", i), index=i)
        except Unscorable as exc:
            failed[i] = [unscorable_entry(exc, index=i)]
    if not prepared:  # no item is valid: nothing is scored, and the request as a whole is refused
        errors = [e for _, errs in sorted(failed.items()) for e in errs[:MAX_ERRORS_PER_ITEM]]
        raise BatchRefused(errors, sum(len(errs) for errs in failed.values()))
    decisions = svc.decide_batch(served, [x for _, x in prepared])
    stored = svc.record(decisions, caller) if decisions else []
    results: list[dict[str, Any] | None] = [None] * len(items)
    for (i, _), payload in zip(prepared, stored, strict=True):
        results[i] = payload
    errors = [
        {"index": i, "errors": errs[:MAX_ERRORS_PER_ITEM], "error_count": len(errs)}
        for i, errs in sorted(failed.items())[:MAX_ITEMS_WITH_ERRORS]
    ]
    # the stored payloads projected on the response (`batch_response_json`), not validated again
    return Response(batch_response_json(results, errors), media_type="application/json")
