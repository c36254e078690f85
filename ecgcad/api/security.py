"""Browser-facing protections of the API and dashboard: response security headers and CSRF checks.

Every response carries ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, a
``Content-Security-Policy`` that allows only this origin's own scripts, styles and images (the dashboard has
no inline script or style), ``Referrer-Policy: no-referrer`` (result URLs carry Patient IDs in their query)
and ``Cache-Control: no-store`` (pages and API answers carry PHI), except the static style sheet.

A state-changing request (POST, PUT, PATCH, DELETE) that is authenticated by the dashboard's session cookie
rather than an ``Authorization`` header must come from this origin and carry a CSRF token:

- ``Sec-Fetch-Site`` must be ``same-origin`` (or ``none``); without it, ``Origin`` must name this host;
  a request with neither relies on the token alone.
- The token is the ``csrf_token`` form field (or ``X-CSRF-Token`` header). For a signed-in session it is an
  HMAC of the session token (:func:`session_csrf_token`), so it is bound to that session and a revoked token
  invalidates it; for the login form, which has no session yet, it must equal the random pre-session cookie
  ``ecgcad_csrf`` set with the login page (double submit).

Refusals answer 403 and are audited as ``auth.failed`` with the reason. Calls with a bearer token are not
affected: a cross-site form cannot set that header.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ecgcad.api.auth import COOKIE_NAME
from ecgcad.db import audit

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

CSRF_COOKIE = "ecgcad_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LOGIN_PATH = "/login"

#: Policy of every response (the dashboard loads /static/style.css and tracing PNGs, nothing else).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    """ASGI middleware adding the security headers above to every HTTP response.

    A header the route set itself (e.g. the looser policy of ``/docs``) is kept.

    Parameters
    ----------
    app:
        The wrapped application.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and add the headers to the response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = list(SECURITY_HEADERS)
                extra.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
                if not cacheable:
                    extra.append((b"cache-control", b"no-store"))
                headers.extend((name, value) for name, value in extra if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def session_csrf_token(session_token: str) -> str:
    """The CSRF token of a dashboard session: HMAC-SHA256 of the session (API) token.

    Parameters
    ----------
    session_token:
        The token in the session cookie.

    Returns
    -------
    str
        Hex digest; it reveals nothing of the session token and changes with it.
    """
    return hmac.new(session_token.encode(), b"ecgcad dashboard csrf v1", hashlib.sha256).hexdigest()


def new_login_csrf() -> str:
    """A fresh random pre-session CSRF value for the login form and the ``ecgcad_csrf`` cookie."""
    return secrets.token_urlsafe(32)


def csrf_context(request: Request) -> dict[str, Any]:
    """Template context: ``csrf_token`` for the forms of the page being rendered.

    With a session cookie, the session's token; otherwise the pre-session value (set on the request's state
    by the login page, or taken from the cookie).
    """
    session = request.cookies.get(COOKIE_NAME)
    if session and request.url.path != LOGIN_PATH:
        return {"csrf_token": session_csrf_token(session)}
    login = getattr(request.state, "login_csrf", None) or request.cookies.get(CSRF_COOKIE) or ""
    return {"csrf_token": login}


def _has_bearer_header(request: Request) -> bool:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(value.strip())


def _cross_site_reason(request: Request) -> str | None:
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site in ("same-origin", "none"):
            return None
        return f"Sec-Fetch-Site {site if site in ('same-site', 'cross-site') else 'unrecognised'}"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return "Origin is not this site"
    return None


async def _submitted_token(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def _audit_refusal(request: Request, reason: str) -> None:
    ctx: AppContext = request.app.state.ctx
    with ctx.db.session() as s:
        audit.record(
            s,
            "auth.failed",
            outcome=4,
            address=request.client.host if request.client else None,
            query=f"{request.method} {request.url.path}",
            detail={"reason": f"cross-site request refused: {reason}"},
        )


async def _refuse(request: Request, reason: str) -> HTTPException:
    # The audit write may wait for the database's write lock: not on the event loop.
    await run_in_threadpool(_audit_refusal, request, reason)
    # The route template, not the raw path: a path is caller text and could carry anything.
    route = getattr(request.scope.get("route"), "path", "?")
    logger.info("refused %s %s: %s", request.method, route, reason)
    return HTTPException(403, f"cross-site request refused: {reason}; reload the page and try again")


async def csrf_guard(request: Request) -> None:
    """Router dependency: refuse a cookie-authenticated state change that is cross-site or lacks the token.

    Parameters
    ----------
    request:
        The request.

    Raises
    ------
    HTTPException
        403 (audited as ``auth.failed``) for a refused request.
    """
    if request.method in SAFE_METHODS or _has_bearer_header(request):
        return
    login = request.url.path == LOGIN_PATH
    session = request.cookies.get(COOKIE_NAME)
    if not login and not session:
        return  # no ambient credential: the route's own authentication answers
    reason = _cross_site_reason(request)
    if reason is not None:
        raise await _refuse(request, reason)
    expected = request.cookies.get(CSRF_COOKIE, "") if login else session_csrf_token(session or "")
    submitted = await _submitted_token(request)
    if not expected or not hmac.compare_digest(submitted.encode(), expected.encode()):
        raise await _refuse(request, "missing or wrong CSRF token")
