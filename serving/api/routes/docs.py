"""The API's documentation pages, served from local assets (no CDN: they work offline).

Swagger UI and ReDoc come from the pinned package `fastapi-offline`, which ships their JavaScript
and CSS; the pages are FastAPI's own HTML pointed at those files, under a Content-Security-Policy
that allows only this origin's scripts plus the one inline start-up script of each page (by its
sha256), inline styles (both renderers set style attributes), data: images and ReDoc's blob:
worker.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"
TITLE = "scf-risk scoring service"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)

router = APIRouter(include_in_schema=False)


def assets() -> StaticFiles:
    """The Swagger UI / ReDoc files of `fastapi-offline`, mounted at `ASSETS`."""
    import fastapi_offline

    return StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static")


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    """The page with a CSP that admits exactly its own inline script(s) by hash."""
    body = bytes(page.body).decode("utf-8")
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode() + "'"
        for s in _INLINE_SCRIPT.findall(body)
    )
    csp = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; worker-src blob:; font-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return HTMLResponse(body, headers={"Content-Security-Policy": csp})


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    """Swagger UI of the OpenAPI document, from local assets."""
    return _with_csp(
        get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{TITLE}: API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )
    )


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    """ReDoc of the OpenAPI document, from local assets (no web fonts)."""
    return _with_csp(
        get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{TITLE}: API reference",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
    )
