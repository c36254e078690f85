"""Hardening of the API and dashboard (issue 16, item 9): cursors and ids beyond 64 bits are answered, not
500; X-Forwarded-For counts only from configured proxies; cookie-authenticated state changes need this origin
and a CSRF token; every response carries the security headers; the OpenAPI description needs a token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from ecgcad.api.app import create_app
from ecgcad.api.params import CURSOR_MESSAGE
from ecgcad.api.server import ApiServer
from ecgcad.config import Settings
from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent
from ecgcad.errors import ConfigurationError
from tests.api.conftest import (
    ActionCalls,
    Seeded,
    TestClient,
    Tokens,
    bearer,
    csrf_field,
    dashboard_login,
)

TOO_BIG = str(2**63)  # 9223372036854775808: one past the largest database id

PAGED = ["/api/v1/ecgs", "/api/v1/deliveries", "/api/v1/audit", "/ecgs", "/deliveries"]


@pytest.mark.parametrize("path", PAGED)
@pytest.mark.parametrize("cursor", [TOO_BIG, "-1", "abc", "1e3", "99999999999999999999999"])
def test_a_bad_cursor_is_400_on_every_paged_route(
    client: TestClient, seeded: Seeded, tokens: Tokens, path: str, cursor: str
) -> None:
    response = client.get(f"{path}?cursor={cursor}", headers=bearer(tokens.admin))
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": CURSOR_MESSAGE}


@pytest.mark.parametrize("path", PAGED)
def test_a_valid_cursor_still_pages(client: TestClient, seeded: Seeded, tokens: Tokens, path: str) -> None:
    for cursor in ("0", str(2**63 - 1)):
        response = client.get(f"{path}?cursor={cursor}", headers=bearer(tokens.admin))
        assert response.status_code == 200, (cursor, response.text)


def test_a_bad_cursor_does_not_hide_authentication(client: TestClient, seeded: Seeded) -> None:
    assert client.get(f"/api/v1/ecgs?cursor={TOO_BIG}").status_code == 401


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/api/v1/ecgs/{id}"),
        ("GET", "/api/v1/ecgs/{id}/report.pdf"),
        ("POST", "/api/v1/ecgs/{id}/rescore"),
        ("POST", "/api/v1/deliveries/{id}/resend"),
        ("POST", "/api/v1/jobs/{id}/retry"),
        ("GET", "/ecgs/{id}"),
        ("GET", "/ecgs/{id}/tracing.png"),
    ],
)
def test_an_id_beyond_64_bits_is_an_unknown_id(
    client: TestClient,
    seeded: Seeded,
    tokens: Tokens,
    stand_in_actions: ActionCalls,
    method: str,
    template: str,
) -> None:
    response = client.request(method, template.format(id=TOO_BIG), headers=bearer(tokens.admin))
    assert response.status_code == 404, response.text
    assert stand_in_actions.calls == []


# -- forwarded headers ------------------------------------------------------------------------------------------


@pytest.fixture
def serve(ctx: AppContext) -> Iterator[ApiServer]:
    """The app behind a real uvicorn on loopback (stopped afterwards); start it with ``serve.start()``."""
    server = ApiServer(ctx)
    try:
        yield server
    finally:
        server.stop()


def _failed_login_address(ctx: AppContext, url: str, headers: dict[str, str]) -> str | None:
    """Call the API with a wrong token over TCP and return the address its ``auth.failed`` event records."""
    response = httpx.get(f"{url}/api/v1/ecgs", headers={**bearer("ecgcad_wrong"), **headers})
    assert response.status_code == 401
    with ctx.db.session() as s:
        event = (
            s.execute(
                select(AuditEvent)
                .where(AuditEvent.event_type == "auth.failed")
                .order_by(AuditEvent.id.desc())
            )
            .scalars()
            .first()
        )
    assert event is not None
    return event.address


def test_forwarded_for_from_a_local_client_is_not_the_audit_address(
    ctx: AppContext, serve: ApiServer
) -> None:
    serve.start()
    host, port = serve.address
    address = _failed_login_address(ctx, f"http://{host}:{port}", {"X-Forwarded-For": "203.0.113.66"})
    assert address == "127.0.0.1"


def test_forwarded_for_counts_from_a_configured_proxy(ctx: AppContext, serve: ApiServer) -> None:
    ctx.settings.api.trusted_proxies = ["127.0.0.0/8"]
    serve.app = create_app(ctx)
    serve.start()
    host, port = serve.address
    url = f"http://{host}:{port}"
    assert _failed_login_address(ctx, url, {"X-Forwarded-For": "203.0.113.66"}) == "203.0.113.66"
    # a client's own entry before the proxy's is not believed past the first untrusted hop
    chain = {"X-Forwarded-For": "198.51.100.7, 203.0.113.66"}
    assert _failed_login_address(ctx, url, chain) == "203.0.113.66"


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert Settings(api={"trusted_proxies": ["10.0.0.1", "fd00::/8"]}).api.trusted_proxies == [
        "10.0.0.1/32",
        "fd00::/8",
    ]
    with pytest.raises((ConfigurationError, ValueError)):
        Settings(api={"trusted_proxies": ["*"]})


# -- CSRF -------------------------------------------------------------------------------------------------------


@pytest.fixture
def signed_in(client: TestClient, seeded: Seeded, tokens: Tokens) -> str:
    """The client holds an operator's dashboard session; the CSRF token of its forms."""
    assert dashboard_login(client, tokens.operator).status_code == 303
    page = client.get(f"/ecgs/{seeded.flagged_ecg}")
    assert page.status_code == 200
    return csrf_field(page.text)


CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site", "Origin": "https://other.hospital.example"},
    {"Origin": "https://evil.example"},  # a browser without Fetch Metadata
    {"Origin": "null"},
]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_a_cross_site_form_post_with_the_session_cookie_changes_nothing(
    client: TestClient,
    seeded: Seeded,
    stand_in_actions: ActionCalls,
    signed_in: str,
    ctx: AppContext,
    headers: dict[str, str],
) -> None:
    for path, data in (
        (f"/ecgs/{seeded.flagged_ecg}/rescore", {}),
        (f"/deliveries/{seeded.failed_delivery}/resend", {"back": "/deliveries"}),
        (f"/api/v1/ecgs/{seeded.flagged_ecg}/rescore", {}),
        ("/logout", {}),
    ):
        # even a page's own token does not help a request from another site
        response = client.post(path, data={**data, "csrf_token": signed_in}, headers=headers)
        assert response.status_code == 403, (path, response.status_code)
    assert stand_in_actions.calls == []
    with ctx.db.session() as s:
        refused = s.execute(select(AuditEvent).where(AuditEvent.event_type == "auth.failed")).scalars().all()
    assert len(refused) == 4 and all("cross-site" in (e.detail or {}).get("reason", "") for e in refused)


@pytest.mark.parametrize("token", [None, "", "0" * 64])
def test_a_same_origin_post_without_the_session_csrf_token_is_refused(
    client: TestClient, seeded: Seeded, stand_in_actions: ActionCalls, signed_in: str, token: str | None
) -> None:
    data = {} if token is None else {"csrf_token": token}
    for path in (f"/ecgs/{seeded.flagged_ecg}/rescore", f"/deliveries/{seeded.failed_delivery}/resend"):
        response = client.post(path, data=data, headers={"Sec-Fetch-Site": "same-origin"})
        assert response.status_code == 403, path
    assert stand_in_actions.calls == []


def test_the_dashboard_forms_work_from_this_origin(
    client: TestClient, seeded: Seeded, stand_in_actions: ActionCalls, signed_in: str
) -> None:
    same_origin = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
    rescore = client.post(
        f"/ecgs/{seeded.flagged_ecg}/rescore",
        data={"csrf_token": signed_in},
        headers=same_origin,
        follow_redirects=False,
    )
    assert rescore.status_code == 303 and "Rescore+queued" in rescore.headers["location"]
    resend = client.post(
        f"/deliveries/{seeded.failed_delivery}/resend",
        data={"back": "/deliveries", "csrf_token": signed_in},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert resend.status_code == 303
    assert [c[0] for c in stand_in_actions.calls] == ["rescore", "resend"]


def test_login_needs_its_form_token_and_this_origin(
    client: TestClient, seeded: Seeded, tokens: Tokens
) -> None:
    page = client.get("/login")
    field = csrf_field(page.text)
    assert field and "ecgcad_csrf" in page.headers["set-cookie"]
    for data, headers in (
        ({"token": tokens.admin}, {}),
        ({"token": tokens.admin, "csrf_token": "forged"}, {}),
        ({"token": tokens.admin, "csrf_token": field}, {"Sec-Fetch-Site": "cross-site"}),
    ):
        response = client.post("/login", data=data, headers=headers, follow_redirects=False)
        assert response.status_code == 403
        assert "ecgcad_session" not in response.headers.get("set-cookie", "")
    ok = client.post(
        "/login",
        data={"token": tokens.admin, "csrf_token": field},
        headers={"Sec-Fetch-Site": "same-origin"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and "ecgcad_session" in ok.headers["set-cookie"]


def test_bearer_token_calls_are_not_subject_to_csrf_checks(
    client: TestClient, seeded: Seeded, tokens: Tokens, stand_in_actions: ActionCalls
) -> None:
    response = client.post(
        f"/api/v1/ecgs/{seeded.flagged_ecg}/rescore",
        headers={**bearer(tokens.operator), "Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 200 and response.json()["state"] == "queued"


# -- headers ----------------------------------------------------------------------------------------------------


def test_pages_and_api_responses_carry_the_security_headers(
    client: TestClient, seeded: Seeded, tokens: Tokens, stand_in_actions: ActionCalls
) -> None:
    admin = bearer(tokens.admin)
    for path, headers in (
        ("/login", {}),
        ("/", admin),
        ("/ecgs", admin),
        (f"/ecgs/{seeded.flagged_ecg}", admin),
        (f"/ecgs/{seeded.flagged_ecg}/tracing.png", admin),
        ("/deliveries", admin),
        ("/audit", admin),
        ("/api/v1/ecgs", admin),
        (f"/api/v1/ecgs/{seeded.flagged_ecg}", admin),
        (f"/api/v1/ecgs/{seeded.flagged_ecg}/report.pdf", admin),
        ("/api/v1/audit?format=csv", admin),
        ("/api/v1/ecgs", {}),  # the 401
    ):
        response = client.get(path, headers=headers)
        got = response.headers
        assert response.status_code in (200, 401), (path, response.status_code)
        assert got.get("x-frame-options") == "DENY", path
        assert got.get("x-content-type-options") == "nosniff", path
        assert got.get("cache-control") == "no-store", path
        policy = got.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy, path
        assert "unsafe-inline" not in policy, path


# -- OpenAPI ----------------------------------------------------------------------------------------------------


def test_docs_and_openapi_need_a_token(client: TestClient, tokens: Tokens) -> None:
    assert client.get("/openapi.json").status_code == 401
    for page in ("/docs", "/redoc"):
        response = client.get(page, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/login", page
    schema = client.get("/openapi.json", headers=bearer(tokens.viewer))
    assert schema.status_code == 200 and "/api/v1/ecgs" in schema.json()["paths"]
    docs = client.get("/docs", headers=bearer(tokens.viewer))
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    nonce = docs.headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in docs.text


def test_docs_can_be_switched_off(ctx: AppContext, tokens: Tokens) -> None:
    ctx.settings.api.docs = False
    with TestClient(create_app(ctx)) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(path, headers=bearer(tokens.admin)).status_code == 404, path
