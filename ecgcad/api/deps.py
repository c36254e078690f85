"""Request authentication and authorisation for the API and the dashboard.

``Depends(require(OPERATORS))`` gives a route its :class:`~ecgcad.api.auth.Principal` or answers
401 (no token, unknown or revoked token; ``WWW-Authenticate: Bearer``) or 403 (the token's role may not use
the route). Both refusals are audit events (``auth.failed`` 110114, ``auth.denied`` 110113) with the client
address. Dashboard pages use :func:`require_page`, which sends the browser to the login page instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from ecgcad.api.auth import COOKIE_NAME, Principal, authenticate
from ecgcad.db import audit

if TYPE_CHECKING:
    from ecgcad.context import AppContext


class LoginRequired(Exception):
    """A dashboard page was asked for without a valid session (answered with a redirect to /login)."""


class PageForbidden(Exception):
    """A dashboard page was asked for with a role that may not see it (answered with a 403 page)."""

    def __init__(self, principal: Principal) -> None:
        super().__init__(principal.role)
        self.principal = principal


def client_address(request: Request) -> str | None:
    """The peer address of the HTTP connection."""
    return request.client.host if request.client else None


def bearer_token(request: Request, *, cookie: bool = True) -> str | None:
    """The token from ``Authorization: Bearer …``, else (when ``cookie``) from the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if cookie:
        return request.cookies.get(COOKIE_NAME) or None
    return None


def _what(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def resolve(request: Request, roles: tuple[str, ...]) -> Principal | str:
    """The principal for ``request`` if its token is valid and its role is in ``roles``.

    Returns the principal, or ``"unauthenticated"`` / ``"forbidden"`` after recording the refusal.
    """
    ctx: AppContext = request.app.state.ctx
    address = client_address(request)
    with ctx.db.session() as s:
        row = authenticate(s, bearer_token(request))
        if row is None:
            audit.record(
                s,
                "auth.failed",
                outcome=4,
                address=address,
                query=_what(request),
                detail={"reason": "missing, unknown or revoked token"},
            )
            return "unauthenticated"
        principal = Principal(user=row.name, role=row.role, address=address)
        if row.role not in roles:
            audit.record(
                s,
                "auth.denied",
                outcome=4,
                user=row.name,
                role=row.role,
                address=address,
                query=_what(request),
                detail={"reason": f"role {row.role} may not use this route", "allowed": list(roles)},
            )
            return "forbidden"
    request.state.principal = principal
    return principal


def require(roles: tuple[str, ...]) -> Callable[[Request], Principal]:
    """A dependency for API routes open to ``roles`` (401 / 403 otherwise)."""

    def dependency(request: Request) -> Principal:
        outcome = resolve(request, roles)
        if outcome == "unauthenticated":
            raise HTTPException(
                401, "missing, unknown or revoked bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        if outcome == "forbidden":
            raise HTTPException(403, "this token's role may not use this route")
        assert isinstance(outcome, Principal)
        return outcome

    return dependency


def require_page(roles: tuple[str, ...]) -> Callable[[Request], Principal]:
    """A dependency for dashboard pages open to ``roles`` (redirect to /login, or a 403 page)."""

    def dependency(request: Request) -> Principal:
        outcome = resolve(request, roles)
        if outcome == "unauthenticated":
            raise LoginRequired()
        if outcome == "forbidden":
            with request.app.state.ctx.db.session() as s:
                row = authenticate(s, bearer_token(request))
            assert row is not None
            raise PageForbidden(Principal(row.name, row.role, client_address(request)))
        assert isinstance(outcome, Principal)
        return outcome

    return dependency
