"""Who may call what: the role of each endpoint, declared once, and the FastAPI dependencies.

The key comes in the ``X-API-Key`` header; the auditor pages also accept the HttpOnly cookie their
sign-in form sets (browsers cannot add headers when following a link): an opaque session id
whose hash is kept server-side with an expiry (never the key itself), revoked at sign-out or
when its key is revoked. Missing or
wrong key: 401. Right key, wrong role: 403. Keys are never logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from serving.api.keys import Caller, KeyStore, Role

SCORE: tuple[Role, ...] = ("scorer",)
READ_DECISIONS: tuple[Role, ...] = ("auditor", "admin")
READ_MODEL: tuple[Role, ...] = ("scorer", "auditor", "admin")
ADMIN: tuple[Role, ...] = ("admin",)

HEADER = "X-API-Key"
COOKIE = "scf_risk_key"
COOKIE_PATH = "/audit"

api_key_header = APIKeyHeader(
    name=HEADER, auto_error=False, description="An API key made by `scf-risk keys add`."
)


def _keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.service.keys
    return keys


def check(caller: Caller | None, roles: tuple[Role, ...]) -> Caller:
    """The caller if it has one of `roles`; else 401 (no valid key) or 403 (wrong role)."""
    if caller is None:
        raise HTTPException(
            status_code=401,
            detail=f"missing or wrong API key (header {HEADER})",
            headers={"WWW-Authenticate": "APIKey"},
        )
    if caller.role not in roles:
        raise HTTPException(
            status_code=403,
            detail=f"role {caller.role} may not do this; it needs {' or '.join(roles)}",
        )
    return caller


def require(*roles: Role) -> Callable[..., Awaitable[Caller]]:
    """A dependency that authenticates the X-API-Key header and checks the role."""

    async def dependency(request: Request, key: str | None = Security(api_key_header)) -> Caller:
        return check(_keys(request).authenticate(key), roles)

    return dependency


def page_caller(request: Request, key: str | None) -> Caller | None:
    """The caller of an auditor page: header first, then the sign-in session cookie."""
    keys = _keys(request)
    if key:
        return keys.authenticate(key)
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 128:
        return None
    key_id = request.app.state.service.store.session_key_id(token)
    return keys.caller_of(key_id) if key_id is not None else None


def same_origin(request: Request) -> bool:
    """False when the request says it comes from another site (Origin, else Referer, naming
    another scheme, host or port than this server's); True when it says nothing (a non-browser
    client) or names this server."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed:
        return True
    parts = urlsplit(claimed)
    host = request.headers.get("host", "")
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{host}"
