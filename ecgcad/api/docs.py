"""The OpenAPI description and its viewers (``/openapi.json``, ``/docs``, ``/redoc``), for signed-in callers only.

``[api] docs = true`` (default) serves them to any valid token (bearer header, or the dashboard session:
the viewers send an anonymous browser to the login page); ``false`` leaves them out (404). The viewers load
Swagger UI / ReDoc from their CDN, so their pages get a policy that allows that CDN and this page's one inline
script (by nonce) — the rest of the app keeps the strict policy of :mod:`ecgcad.api.security`.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from ecgcad.api.auth import EVERYONE, Principal
from ecgcad.api.deps import require, require_page

if TYPE_CHECKING:
    from ecgcad.context import AppContext

OPENAPI_URL = "/openapi.json"
CDN = "https://cdn.jsdelivr.net"


def docs_policy(nonce: str) -> str:
    """The Content-Security-Policy of a documentation viewer page whose inline script carries ``nonce``."""
    return (
        f"default-src 'none'; script-src 'self' {CDN} 'nonce-{nonce}'; "
        f"style-src 'self' {CDN} https://fonts.googleapis.com 'unsafe-inline'; font-src https://fonts.gstatic.com; "
        f"img-src 'self' data: {CDN} https://fastapi.tiangolo.com; connect-src 'self'; worker-src blob:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def _viewer(page: HTMLResponse) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = bytes(page.body).decode().replace("<script>", f'<script nonce="{nonce}">')
    return HTMLResponse(html, headers={"Content-Security-Policy": docs_policy(nonce)})


def include_docs(app: FastAPI, ctx: AppContext) -> None:
    """Add the authenticated documentation routes to ``app`` unless ``[api] docs`` is false.

    Parameters
    ----------
    app:
        The application, built with ``openapi_url=None`` so that FastAPI adds no anonymous ones.
    ctx:
        The application context (its settings decide).
    """
    if not ctx.settings.api.docs:
        return
    title = f"{app.title} API"

    @app.get(OPENAPI_URL, include_in_schema=False)
    def openapi(principal: Principal = Depends(require(EVERYONE))) -> JSONResponse:
        """The OpenAPI description (any valid token)."""
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def swagger(principal: Principal = Depends(require_page(EVERYONE))) -> HTMLResponse:
        """Swagger UI over the OpenAPI description."""
        return _viewer(get_swagger_ui_html(openapi_url=OPENAPI_URL, title=title))

    @app.get("/redoc", include_in_schema=False)
    def redoc(principal: Principal = Depends(require_page(EVERYONE))) -> HTMLResponse:
        """ReDoc over the OpenAPI description."""
        return _viewer(get_redoc_html(openapi_url=OPENAPI_URL, title=title))
