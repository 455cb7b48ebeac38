"""Who may call what: the role of each endpoint, declared once, and the FastAPI dependencies.

The key comes in the ``X-API-Key`` header; the auditor pages also accept it from the HttpOnly
cookie their sign-in form sets (browsers cannot add headers when following a link). Missing or
wrong key: 401. Right key, wrong role: 403. Keys are never logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
    """The caller of an auditor page: header first, then the sign-in cookie."""
    keys = _keys(request)
    return keys.authenticate(key or request.cookies.get(COOKIE))
