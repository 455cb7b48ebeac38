"""The HTTP routes: each validates, calls a plain function and (for scores) records the decision.

CPU-bound handlers are ``def`` (run in the thread pool); only the tiny body/sign-in readers are
``async``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from serving import scoring
from serving.errors import error_schemas, responses
from serving.exceptions import DecisionNotFound, InvalidInput, ModelLoadFailed
from serving.keys import Caller
from serving.pages import csp, new_nonce
from serving.schemas import (
    DECISION_ID_PATTERN,
    SME_ID_PATTERN,
    DecisionList,
    DecisionRecord,
    Health,
    ModelInfo,
    Readiness,
    ReloadResponse,
    ScoreRequestBase,
    ScoreResponse,
    ServedModelInfo,
)
from serving.security import (
    ADMIN,
    COOKIE,
    COOKIE_PATH,
    READ_DECISIONS,
    READ_MODEL,
    SCORE,
    api_key_header,
    check,
    page_caller,
    require,
)
from serving.service import Service

GRADE_PATTERN = r"^[A-Za-z0-9+\-]{1,16}$"
NEXT_RE = re.compile(r"^/audit/[A-Za-z0-9/_?=&.%+\-]*$")


def _or_empty(pattern: str) -> str:
    """An anchored ``^...$`` pattern that also accepts the empty string (a blank form field).
    ``"^$|" + pattern[1:]`` would leave the second branch unanchored at the start."""
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})?$"


DecisionIdPath = Annotated[str, Path(pattern=DECISION_ID_PATTERN, description="A decision's UUID.")]

router = APIRouter()


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


def _parse(model: Any, body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = [
            {**err, "loc": ("body", *err.get("loc", ()))} for err in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors, body=None) from None


def _score_body(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


SvcDep = Annotated[Service, Depends(service)]
Body = Annotated[bytes, Depends(raw_body)]


@router.post(
    "/v1/scores",
    response_model=ScoreResponse,
    openapi_extra=_score_body("ScoreRequest"),
    tags=["scores"],
    responses=responses(401, 403, 413, 422, 503),
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
    request: ScoreRequestBase = _parse(served.request_model, body)
    if request.mode == "features":
        decision = scoring.score(served, request)
    else:
        decision = await run_in_threadpool(
            scoring.score, served, request, latest=svc.store.latest_features
        )
    stored = await run_in_threadpool(svc.record, [decision], caller)
    return stored[0]


@router.post(
    "/v1/scores/batch",
    response_model=list[ScoreResponse],
    openapi_extra=_score_body("BatchScoreRequest"),
    tags=["scores"],
    responses=responses(401, 403, 413, 422, 503),
)
def post_score_batch(
    caller: Annotated[Caller, Depends(require(*SCORE))], body: Body, svc: SvcDep
) -> list[dict[str, Any]]:
    """Score a list of requests, one decision each, stored together before answering."""
    served = svc.holder.get()
    items = _parse(served.batch_model, body).root
    if not items or len(items) > svc.settings.batch_limit:
        raise InvalidInput(
            (), f"a batch holds 1 to {svc.settings.batch_limit} items, got {len(items)}"
        )
    decisions = scoring.score_many(served, items, latest=svc.store.latest_features)
    return svc.record(decisions, caller)


@router.get(
    "/v1/decisions/{decision_id}",
    response_model=DecisionRecord,
    tags=["decisions"],
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
    tags=["decisions"],
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


@router.get(
    "/v1/model", response_model=ServedModelInfo, tags=["model"], responses=responses(401, 403, 503)
)
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


@router.post(
    "/v1/admin/reload",
    response_model=ReloadResponse,
    tags=["admin"],
    responses=responses(401, 403, 413, 503),
)
def reload_model(_: Annotated[Caller, Depends(require(*ADMIN))], svc: SvcDep) -> dict[str, Any]:
    """Load the current champion and swap it in; on failure keep serving the old model."""
    previous = svc.holder.current
    try:
        served = svc.reload()
    except ModelLoadFailed as exc:
        kept = previous.exact_uri if previous is not None else "no model"
        raise ModelLoadFailed(f"{exc}; still serving {kept}") from exc
    return {
        "reloaded": True,
        "previous": previous.info if previous is not None else None,
        "model": served.info,
    }


@router.get("/healthz", response_model=Health, tags=["health"])
async def healthz() -> dict[str, str]:
    """The process is up (no key needed)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    tags=["health"],
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
    tags=["health"],
    response_class=Response,
    responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
)
def metrics(svc: SvcDep) -> Response:
    """Prometheus text: requests, latency, decisions by grade, served model."""
    content, media_type = svc.metrics.render()
    return Response(content=content, media_type=media_type)


# -- auditor pages ---------------------------------------------------------------------------
def _html(content: str, nonce: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        content, status_code=status, headers={"Content-Security-Policy": csp(nonce)}
    )


def _page_auth(request: Request, key: str | None, svc: Service) -> HTMLResponse | Caller:
    caller = page_caller(request, key)
    nonce = new_nonce()
    if caller is None:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        page = svc.pages.login(next_url=here, error=None, nonce=nonce)
        resp = _html(page, nonce, 401)
        resp.headers["WWW-Authenticate"] = "APIKey"
        return resp
    check(caller, READ_DECISIONS)
    return caller


@router.get(
    "/audit/decisions/{decision_id}",
    response_class=HTMLResponse,
    tags=["audit pages"],
    responses=responses(401, 403, 404, 422, 503, html=(401, 404), page=True),
)
def decision_page(
    decision_id: DecisionIdPath,
    request: Request,
    svc: SvcDep,
    key: Annotated[str | None, Depends(api_key_header)] = None,
) -> HTMLResponse:
    """A stored decision as a page: waterfall of the points, features table, model version."""
    auth = _page_auth(request, key, svc)
    if isinstance(auth, HTMLResponse):
        return auth
    try:
        record = svc.store.get(decision_id)
    except DecisionNotFound as exc:
        nonce = new_nonce()
        return _html(f"<!doctype html><title>not found</title><p>{exc}</p>", nonce, 404)
    nonce = new_nonce()
    return _html(svc.pages.decision(record, svc.descriptions(), nonce), nonce)


@router.get(
    "/audit/decisions",
    response_class=HTMLResponse,
    tags=["audit pages"],
    responses=responses(401, 403, 422, 503, html=(401,), page=True),
)
def decisions_page(
    request: Request,
    svc: SvcDep,
    sme_id: Annotated[str | None, Query(pattern=_or_empty(SME_ID_PATTERN))] = None,
    grade: Annotated[str | None, Query(pattern=_or_empty(GRADE_PATTERN))] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    key: Annotated[str | None, Depends(api_key_header)] = None,
) -> HTMLResponse:
    """Recent decisions, filterable by SME and grade."""
    auth = _page_auth(request, key, svc)
    if isinstance(auth, HTMLResponse):
        return auth
    sme, grd = sme_id or None, grade or None
    records = svc.store.find(sme_id=sme, grade=grd, limit=limit)
    nonce = new_nonce()
    page = svc.pages.index(
        records, sme_id=sme, grade=grd, grades=svc.grades(), limit=limit, nonce=nonce
    )
    return _html(page, nonce)


@router.get(
    "/audit/login",
    response_class=HTMLResponse,
    tags=["audit pages"],
    responses=responses(422, page=True),
)
def login_page(svc: SvcDep, next: str = "/audit/decisions") -> HTMLResponse:
    """The sign-in form of the auditor pages."""
    nonce = new_nonce()
    target = next if NEXT_RE.match(next) else "/audit/decisions"
    return _html(svc.pages.login(next_url=target, error=None, nonce=nonce), nonce)


@router.post(
    "/audit/login",
    response_class=RedirectResponse,
    status_code=303,
    tags=["audit pages"],
    responses={
        303: {"description": "Signed in: on to the page asked for (HttpOnly cookie set)."},
        **responses(401, 403, 413, 422, 503, html=(401, 403)),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "api_key": {"type": "string"},
                            "next": {"type": "string"},
                        },
                        "required": ["api_key"],
                    }
                }
            },
        }
    },
)
async def login(request: Request) -> Response:
    """Check a key (form field ``api_key``) and keep it in an HttpOnly cookie for /audit."""
    svc = app_service(request)
    try:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:  # more fields than a sign-in form has
        raise InvalidInput((), "a sign-in form has the fields api_key and next only") from None
    key = (form.get("api_key") or [""])[0].strip()
    target = (form.get("next") or ["/audit/decisions"])[0]
    target = target if NEXT_RE.match(target) else "/audit/decisions"
    caller = svc.keys.authenticate(key)
    nonce = new_nonce()
    if caller is None or caller.role not in READ_DECISIONS:
        error = "wrong key" if caller is None else f"role {caller.role} cannot read decisions"
        page = svc.pages.login(next_url=target, error=error, nonce=nonce)
        return _html(page, nonce, 401 if caller is None else 403)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=COOKIE_PATH,
        max_age=8 * 3600,
    )
    return resp


@router.post(
    "/audit/logout",
    response_class=RedirectResponse,
    status_code=303,
    tags=["audit pages"],
    responses={303: {"description": "Signed out: on to the sign-in page."}, **responses(413)},
)
async def logout() -> Response:
    """Forget the sign-in cookie."""
    resp = RedirectResponse("/audit/login", status_code=303)
    resp.delete_cookie(COOKIE, path=COOKIE_PATH)
    return resp


def models_for_openapi(svc: Service) -> dict[str, Any]:
    """The current request schemas, for the OpenAPI document's components."""
    single, batch = svc.request_models()
    schemas: dict[str, Any] = error_schemas()
    for model in (single, batch):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


__all__ = ["ModelInfo", "models_for_openapi", "router"]
