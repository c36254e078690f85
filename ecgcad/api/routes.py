"""Mounts the admin API (``/api/v1``), the dashboard (``/``) and its static files on the app."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from ecgcad.api import dashboard, v1
from ecgcad.api.deps import LoginRequired, PageForbidden

if TYPE_CHECKING:
    from ecgcad.context import AppContext


def include_routes(app: FastAPI, ctx: AppContext) -> None:
    """Add the API routers, the dashboard and the refusal handlers to ``app``."""
    app.include_router(v1.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(PageForbidden)
    async def _forbidden(request: Request, exc: PageForbidden) -> HTMLResponse:
        response = dashboard.templates.TemplateResponse(
            request,
            "error.html",
            {
                "principal": exc.principal,
                "title": "Not allowed",
                "text": f"The role {exc.principal.role} may not open this page.",
                "can_operate": exc.principal.role in ("admin", "operator"),
                "is_admin": exc.principal.role == "admin",
                "message": None,
            },
        )
        response.status_code = 403
        return response
