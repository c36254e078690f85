"""The FastAPI application: health, readiness and metrics (the admin API and dashboard mount here too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ecgcad import __version__
from ecgcad.api.params import validation_error_handler
from ecgcad.api.routes import include_routes
from ecgcad.api.security import SecurityHeadersMiddleware
from ecgcad.pipeline.status import destination_states

if TYPE_CHECKING:
    from ecgcad.context import AppContext


def readiness(ctx: AppContext) -> tuple[bool, dict[str, Any]]:
    """Readiness checks: database, listeners bound, worker alive, model loaded, destinations' last state."""
    checks: dict[str, Any] = {"database": ctx.db.ping()}
    for name in ("dicom", "hl7", "worker", "scheduler"):
        comp = ctx.components.get(name)
        if comp is not None:
            checks[name] = bool(getattr(comp, "alive", True))
    checks["model_loaded"] = ctx.predictor_loaded
    # A failing model does not make the service unready: listeners keep accepting and ECGs stay queued.
    checks["model_error"] = ctx.model_error
    if checks["database"]:
        # Destinations do not decide readiness (ECGs are kept until a peer is back); monitoring alerts on them.
        checks["destinations"] = destination_states(ctx)
    essential = [v for k, v in checks.items() if k in ("database", "dicom", "hl7", "worker")]
    return all(essential), checks


def create_app(ctx: AppContext) -> FastAPI:
    """Build the app around an :class:`~ecgcad.context.AppContext`."""
    # No anonymous /docs, /redoc or /openapi.json: ecgcad.api.docs serves them behind authentication.
    app = FastAPI(
        title="ecgcad",
        version=__version__,
        description="ECG coronary stenosis risk service API",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_middleware(SecurityHeadersMiddleware)
    proxies = list(ctx.settings.api.trusted_proxies)
    if proxies:
        # Added last, so outermost: the client address and scheme are fixed before anything reads them.
        # Only these peers' X-Forwarded-For / X-Forwarded-Proto count (uvicorn's own handling is off).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Ready to take work: database reachable, listeners bound, worker alive, model state."""
        ok, checks = readiness(ctx)
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format (anonymous unless ``[api] metrics_public = false``; then any token)."""
        from ecgcad.api.metrics import render_metrics

        if not ctx.settings.api.metrics_public:
            from ecgcad.api.auth import EVERYONE, Principal
            from ecgcad.api.deps import resolve

            if not isinstance(resolve(request, EVERYONE), Principal):
                raise HTTPException(
                    401, "a bearer token is needed for /metrics", headers={"WWW-Authenticate": "Bearer"}
                )

        return PlainTextResponse(render_metrics(ctx), media_type="text/plain; version=0.0.4")

    include_routes(app, ctx)
    from ecgcad.api.docs import include_docs

    include_docs(app, ctx)
    return app
