"""Authentication (bearer tokens, stored hashed) and each role's allowed and forbidden calls."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from ecgcad.api.app import create_app
from ecgcad.api.auth import create_token, hash_token, revoke_token
from ecgcad.context import AppContext
from ecgcad.db.models import ApiToken, AuditEvent
from tests.api.conftest import (
    Seeded,
    TestClient,
    Tokens,
    bearer,
    csrf_field,
    dashboard_login,
    make_tokens,
    seed,
)

# (method, path template, roles allowed)
ROUTES: list[tuple[str, str, set[str]]] = [
    ("GET", "/api/v1/ecgs", {"admin", "operator", "viewer"}),
    ("GET", "/api/v1/ecgs/{ecg}", {"admin", "operator", "viewer"}),
    ("GET", "/api/v1/ecgs/{ecg}/report.pdf", {"admin", "operator", "viewer"}),
    ("POST", "/api/v1/ecgs/{ecg}/rescore", {"admin", "operator"}),
    ("GET", "/api/v1/deliveries", {"admin", "operator"}),
    ("POST", "/api/v1/deliveries/{delivery}/resend", {"admin", "operator"}),
    ("GET", "/api/v1/jobs", {"admin", "operator"}),
    ("POST", "/api/v1/jobs/999/retry", {"admin", "operator"}),
    ("GET", "/api/v1/models", {"admin", "operator", "viewer"}),
    ("GET", "/api/v1/audit", {"admin"}),
]


def _path(template: str, seeded: Seeded) -> str:
    return template.format(ecg=seeded.flagged_ecg, delivery=seeded.failed_delivery)


def test_anonymous_may_only_use_health_and_public_metrics(client: TestClient, seeded: Seeded) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)
    assert client.get("/metrics").status_code == 200
    for method, template, _ in ROUTES:
        response = client.request(method, _path(template, seeded))
        assert response.status_code == 401, (method, template)
        assert response.headers["www-authenticate"] == "Bearer"
    for page in ("/", "/ecgs", "/deliveries", "/audit", f"/ecgs/{seeded.flagged_ecg}"):
        response = client.get(page, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login", page


def test_metrics_need_a_token_when_not_public(ctx: AppContext, tokens: Tokens) -> None:
    ctx.settings.api.metrics_public = False
    with TestClient(create_app(ctx)) as c:
        assert c.get("/metrics").status_code == 401
        response = c.get("/metrics", headers=bearer(tokens.viewer))
        assert response.status_code == 200 and "ecgcad_queue_jobs" in response.text


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
def test_each_role_gets_exactly_its_routes(
    client: TestClient, seeded: Seeded, tokens: Tokens, stand_in_actions: object, role: str
) -> None:
    for method, template, allowed in ROUTES:
        response = client.request(method, _path(template, seeded), headers=bearer(tokens.for_role(role)))
        if role in allowed:
            assert response.status_code not in (401, 403), (role, method, template, response.text)
        else:
            assert response.status_code == 403, (role, method, template)


@pytest.mark.parametrize(
    ("role", "page", "status"),
    [
        ("viewer", "/deliveries", 403),
        ("viewer", "/audit", 403),
        ("operator", "/audit", 403),
        ("operator", "/deliveries", 200),
        ("viewer", "/ecgs", 200),
        ("admin", "/audit", 200),
    ],
)
def test_dashboard_pages_follow_the_same_roles(
    client: TestClient, seeded: Seeded, tokens: Tokens, role: str, page: str, status: int
) -> None:
    assert client.get(page, headers=bearer(tokens.for_role(role))).status_code == status


def test_refusals_are_audited_with_address(any_ctx: AppContext) -> None:
    """Works the same on SQLite and PostgreSQL."""
    seed(any_ctx)
    tokens = make_tokens(any_ctx)
    with TestClient(create_app(any_ctx)) as c:
        assert c.get("/api/v1/ecgs", headers=bearer("ecgcad_wrong")).status_code == 401
        assert c.get("/api/v1/audit", headers=bearer(tokens.viewer)).status_code == 403
        assert c.get("/api/v1/ecgs", headers=bearer(tokens.viewer)).status_code == 200
    with any_ctx.db.session() as s:
        failed = s.execute(select(AuditEvent).where(AuditEvent.event_type == "auth.failed")).scalars().one()
        denied = s.execute(select(AuditEvent).where(AuditEvent.event_type == "auth.denied")).scalars().one()
    assert (failed.event_id, failed.outcome, failed.address, failed.user) == ("110114", 4, "testclient", None)
    assert failed.query == "GET /api/v1/ecgs"
    assert (denied.event_id, denied.user, denied.role, denied.outcome) == (
        "110113",
        "victor-viewer",
        "viewer",
        4,
    )


def test_tokens_are_stored_hashed_and_revocation_takes_effect_at_once(
    ctx: AppContext, client: TestClient, seeded: Seeded
) -> None:
    with ctx.db.session() as s:
        token = create_token(s, "temp", "viewer", actor="test")
    with ctx.db.session() as s:
        row = s.execute(select(ApiToken).where(ApiToken.name == "temp")).scalar_one()
        assert row.token_hash == hash_token(token) and token not in row.token_hash
    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 200
    with ctx.db.session() as s:
        revoke_token(s, "temp", actor="test")
    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 401
    with ctx.db.session() as s:
        types = [e.event_type for e in s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()]
    assert "token.created" in types and "token.revoked" in types


def test_dashboard_login_sets_an_httponly_cookie_and_logout_clears_it(
    client: TestClient, seeded: Seeded, tokens: Tokens
) -> None:
    bad = dashboard_login(client, "nope")
    assert bad.status_code == 303 and bad.headers["location"].startswith("/login?error=")
    ok = dashboard_login(client, tokens.operator)
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    overview = client.get("/")
    assert overview.status_code == 200
    logout = client.post("/logout", data={"csrf_token": csrf_field(overview.text)}, follow_redirects=False)
    assert logout.status_code == 303
    client.cookies.clear()
    assert client.get("/", follow_redirects=False).status_code == 303
