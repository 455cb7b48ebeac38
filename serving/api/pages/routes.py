"""The auditor pages: sign-in, the decision list and one decision with its waterfall."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from serving.api.deps import DecisionIdPath, SvcDep, app_service
from serving.api.errors import responses
from serving.api.keys import Caller
from serving.api.pages import csp, new_nonce
from serving.api.security import (
    COOKIE,
    COOKIE_PATH,
    READ_DECISIONS,
    api_key_header,
    check,
    page_caller,
    same_origin,
)
from serving.api.service import Service
from serving.exceptions import DecisionNotFound, InvalidInput
from serving.schemas import SME_ID_PATTERN

SESSION_SECONDS = 8 * 3600
GRADE_PATTERN = r"^[A-Za-z0-9+\-]{1,16}$"
NEXT_RE = re.compile(r"^/audit/[A-Za-z0-9/_?=&.%+\-]*$")

router = APIRouter(tags=["audit pages"])


async def raw_form(request: Request) -> bytes:
    """The sign-in form's body, read on the event loop (the route itself is ``def``: it writes
    the session to the database)."""
    return await request.body()


def _or_empty(pattern: str) -> str:
    """An anchored ``^...$`` pattern that also accepts the empty string (a blank form field).
    ``"^$|" + pattern[1:]`` would leave the second branch unanchored at the start."""
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})?$"


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
    responses=responses(401, 403, 404, 422, 503, html=(401, 404)),
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
    responses=responses(401, 403, 422, 503, html=(401,)),
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
    responses=responses(422),
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
def login(request: Request, form_body: Annotated[bytes, Depends(raw_form)]) -> Response:
    """Check a key (form field ``api_key``) and open a session: an opaque id in an HttpOnly
    cookie for /audit (the key itself is never stored in the browser). A sign-in posted from
    another site (Origin or Referer) is refused."""
    svc = app_service(request)
    if not same_origin(request):
        raise HTTPException(status_code=403, detail="sign-in from another site refused")
    try:
        form = parse_qs(form_body.decode("utf-8", "replace"), max_num_fields=4)
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
    token = svc.store.create_session(caller.key_id, SESSION_SECONDS)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=COOKIE_PATH,
        max_age=SESSION_SECONDS,
    )
    return resp


@router.post(
    "/audit/logout",
    response_class=RedirectResponse,
    status_code=303,
    responses={303: {"description": "Signed out: on to the sign-in page."}, **responses(413)},
)
def logout(request: Request) -> Response:
    """End the session (server-side) and forget the sign-in cookie."""
    token = request.cookies.get(COOKIE)
    if token and len(token) <= 128:
        app_service(request).store.end_session(token)
    resp = RedirectResponse("/audit/login", status_code=303)
    resp.delete_cookie(COOKIE, path=COOKIE_PATH)
    return resp
