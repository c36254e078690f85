"""Every call that touches patient data writes an audit event; the audit log is queryable, its reading is
itself audited (110101), and tampering with one row breaks the hash chain."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select, text

from ecgcad.api.app import create_app
from ecgcad.context import AppContext
from ecgcad.db.audit import verify_session
from ecgcad.db.models import AuditEvent, Job
from tests.api.conftest import PATIENT_FLAGGED, Seeded, TestClient, Tokens, bearer, make_tokens, seed

# (method, path template, role, event type, expects a patient participant, form data)
AUDITED: list[tuple[str, str, str, str, bool]] = [
    ("GET", "/api/v1/ecgs?patient_id=" + PATIENT_FLAGGED, "viewer", "api.query", True),
    ("GET", "/api/v1/ecgs/{ecg}", "viewer", "api.read", True),
    ("GET", "/api/v1/ecgs/{ecg}/report.pdf", "viewer", "api.read", True),
    ("POST", "/api/v1/ecgs/{ecg}/rescore", "operator", "api.action", True),
    ("GET", "/api/v1/deliveries", "operator", "api.query", False),
    ("POST", "/api/v1/deliveries/{delivery}/resend", "operator", "api.action", True),
    ("GET", "/api/v1/jobs", "operator", "api.query", False),
    ("POST", "/api/v1/jobs/{job}/retry", "operator", "api.action", True),
    ("GET", "/api/v1/models", "viewer", "api.read", False),
    ("GET", "/api/v1/audit?patient_id=" + PATIENT_FLAGGED, "admin", "audit.read", True),
    ("GET", "/ecgs?patient_id=" + PATIENT_FLAGGED, "viewer", "api.query", True),
    ("GET", "/ecgs/{ecg}", "viewer", "api.read", True),
    ("GET", "/ecgs/{ecg}/tracing.png", "viewer", "api.read", True),
    ("POST", "/ecgs/{ecg}/rescore", "operator", "api.action", True),
    ("GET", "/deliveries", "operator", "api.query", False),
    ("POST", "/deliveries/{delivery}/resend", "operator", "api.action", True),
    ("GET", "/audit?patient_id=" + PATIENT_FLAGGED, "admin", "audit.read", True),
]

#: Routes that show no patient data (and say why they are not audited).
NOT_PATIENT_DATA = {
    "/healthz": "process liveness",
    "/readyz": "component states",
    "/metrics": "aggregate counters",
    "/": "aggregate counts only",
    "/login": "authentication (audited as auth.login / auth.failed)",
    "/logout": "audited as auth.logout",
}


def _failed_job(ctx: AppContext, ecg_id: int) -> int:
    with ctx.db.session() as s:
        job_id = ctx.queue.defer(s, "score", {"ecg_id": ecg_id}, max_attempts=1)
    assert job_id is not None
    (claimed,) = ctx.queue.claim(["score"], 1, "test")
    assert ctx.queue.retry_later(claimed.id, "model exploded", retryable=False) == "failed"
    return job_id


def test_every_route_is_either_audited_or_declared_free_of_patient_data(ctx: AppContext) -> None:
    app = create_app(ctx)
    covered = {template.split("?")[0] for _, template, *_ in AUDITED}
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path.startswith(("/docs", "/openapi", "/redoc")):
            continue
        path = (
            route.path.replace("{ecg_id}", "{ecg}")
            .replace("{delivery_id}", "{delivery}")
            .replace("{job_id}", "{job}")
        )
        assert path in covered or path in NOT_PATIENT_DATA, f"{route.path} has no audit test"


@pytest.mark.parametrize(("method", "template", "role", "event_type", "has_patient"), AUDITED)
def test_each_access_writes_an_audit_event(
    ctx: AppContext,
    client: TestClient,
    seeded: Seeded,
    tokens: Tokens,
    stand_in_actions: object,
    method: str,
    template: str,
    role: str,
    event_type: str,
    has_patient: bool,
) -> None:
    job = _failed_job(ctx, seeded.flagged_ecg) if "{job}" in template else 0
    path = template.format(ecg=seeded.flagged_ecg, delivery=seeded.failed_delivery, job=job)
    with ctx.db.session() as s:
        before = s.execute(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)).scalar() or 0
    response = client.request(method, path, headers=bearer(tokens.for_role(role)), follow_redirects=False)
    assert response.status_code in (200, 303), response.text
    with ctx.db.session() as s:
        events = list(
            s.execute(
                select(AuditEvent).where(AuditEvent.id > before, AuditEvent.event_type == event_type)
            ).scalars()
        )
    assert events, f"{method} {path} wrote no {event_type} event"
    event = events[-1]
    expected_user = {"admin": "alice-admin", "operator": "oscar-operator", "viewer": "victor-viewer"}[role]
    assert (event.user, event.role, event.address, event.outcome) == (expected_user, role, "testclient", 0)
    assert event.occurred_at is not None
    assert event.detail is not None and event.detail["what"] == f"{method} {path.split('?')[0]}"
    if has_patient:
        assert event.patient_id == PATIENT_FLAGGED
    if "{ecg}" in template:
        assert event.ecg_id == seeded.flagged_ecg
        assert event.study_instance_uid == "1.2.826.0.1.1"
    if event_type == "audit.read":
        assert event.event_id == "110101"


def test_a_failed_action_is_audited_with_its_outcome(
    ctx: AppContext, client: TestClient, seeded: Seeded, tokens: Tokens, stand_in_actions: object
) -> None:
    from ecgcad.errors import DeliveryError

    stand_in_actions.fail_with = DeliveryError("PACS refused")  # type: ignore[attr-defined]
    response = client.post(
        f"/api/v1/deliveries/{seeded.failed_delivery}/resend", headers=bearer(tokens.operator)
    )
    assert response.status_code == 502 and response.json()["detail"] == "PACS refused"
    assert client.post("/api/v1/ecgs/424242/rescore", headers=bearer(tokens.operator)).status_code == 404
    with ctx.db.session() as s:
        actions = list(s.execute(select(AuditEvent).where(AuditEvent.event_type == "api.action")).scalars())
    assert [(a.outcome, a.detail["action"]) for a in actions] == [(8, "resend"), (4, "rescore")]
    assert actions[0].detail["error"] == "PACS refused"


def test_audit_query_filters_exports_csv_and_is_itself_audited(
    ctx: AppContext, client: TestClient, seeded: Seeded, tokens: Tokens
) -> None:
    client.get(f"/api/v1/ecgs/{seeded.flagged_ecg}", headers=bearer(tokens.viewer))
    client.get(f"/api/v1/ecgs/{seeded.low_ecg}", headers=bearer(tokens.operator))
    body = client.get("/api/v1/audit?user=victor-viewer", headers=bearer(tokens.admin)).json()
    assert [e["event_type"] for e in body["items"]] == ["api.read"]
    assert body["items"][0]["patient_id"] == PATIENT_FLAGGED and body["next"] is None
    by_event = client.get("/api/v1/audit?event=110101", headers=bearer(tokens.admin)).json()["items"]
    assert len(by_event) == 1 and by_event[0]["event_type"] == "audit.read"  # the first query, audited
    response = client.get(
        f"/api/v1/audit?patient_id={PATIENT_FLAGGED}&format=csv", headers=bearer(tokens.admin)
    )
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows and {r["patient_id"] for r in rows} == {PATIENT_FLAGGED}
    assert "api.read" in {r["event_type"] for r in rows}
    empty = client.get("/api/v1/audit?since=2999-01-01", headers=bearer(tokens.admin)).json()
    assert empty["items"] == []
    assert client.get("/api/v1/audit?until=not-a-date", headers=bearer(tokens.admin)).status_code == 422


def test_tampering_with_one_row_is_detected(any_ctx: AppContext) -> None:
    """On SQLite and PostgreSQL: the chain verifies after API use; changing one row names that row."""
    seeded = seed(any_ctx)
    tokens = make_tokens(any_ctx)
    with TestClient(create_app(any_ctx)) as c:
        for _ in range(3):
            assert (
                c.get(f"/api/v1/ecgs/{seeded.flagged_ecg}", headers=bearer(tokens.viewer)).status_code == 200
            )
    with any_ctx.db.session() as s:
        report = verify_session(s)
        assert report.ok and report.checked >= 6
        target = (
            s.execute(
                select(AuditEvent.id).where(AuditEvent.event_type == "api.read").order_by(AuditEvent.id)
            )
            .scalars()
            .all()[1]
        )
    with any_ctx.db.engine.begin() as conn:
        # The table refuses UPDATE; an attacker with DDL rights drops the guard first.
        if any_ctx.db.dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
        conn.execute(text("UPDATE audit_events SET \"user\" = 'mallory' WHERE id = :id"), {"id": target})
    with any_ctx.db.session() as s:
        report = verify_session(s)
    assert not report.ok and report.first_broken_id == target
    assert "changed" in (report.reason or "")


def test_append_only_guard_refuses_updates(ctx: AppContext, seeded: Seeded, tokens: Tokens) -> None:
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError, match="append-only"):
        with ctx.db.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET outcome = 0"))


def test_job_retry_requeues_a_failed_job(
    ctx: AppContext, client: TestClient, seeded: Seeded, tokens: Tokens
) -> None:
    job = _failed_job(ctx, seeded.flagged_ecg)
    summary = client.get("/api/v1/jobs", headers=bearer(tokens.operator)).json()
    assert summary["counts"]["failed"] == 1
    assert summary["failed"][0]["id"] == job and summary["failed"][0]["last_error"] == "model exploded"
    assert client.post(f"/api/v1/jobs/{job}/retry", headers=bearer(tokens.operator)).status_code == 200
    with ctx.db.session() as s:
        assert s.get(Job, job).state == "queued"  # type: ignore[union-attr]
    assert client.post(f"/api/v1/jobs/{job}/retry", headers=bearer(tokens.operator)).status_code == 409
    assert client.post("/api/v1/jobs/424242/retry", headers=bearer(tokens.operator)).status_code == 404
