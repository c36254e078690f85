"""The JSON API under ``/api/v1`` (bearer tokens; roles admin / operator / viewer).

Every route writes an audit event naming the caller, role, client address, the request, the patient /
study / ECG concerned and the outcome; reading the audit log writes ``audit.read`` (DICOM 110101).
Pipeline errors become HTTP statuses here and nowhere else: unknown id 404, not possible now (e.g. already queued) 409,
destination refused 502, out of resources 503, action not installed 501.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from ecgcad.api import queries
from ecgcad.api.auth import ADMIN, EVERYONE, OPERATORS, Principal
from ecgcad.api.deps import require
from ecgcad.api.params import Cursor, fits_int64
from ecgcad.api.security import csrf_guard
from ecgcad.db import audit
from ecgcad.errors import BackPressureError, DeliveryError, EcgcadError, QueueError
from ecgcad.pipeline import actions

if TYPE_CHECKING:
    from ecgcad.context import AppContext
    from ecgcad.db.models import Delivery, EcgRecord

logger = logging.getLogger(__name__)

# A call authenticated by the dashboard's cookie instead of a bearer header must pass the CSRF checks.
router = APIRouter(prefix="/api/v1", dependencies=[Depends(csrf_guard)])

Vessel = Literal["rca", "lm", "lad", "lcx"]


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _what(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def next_link(request: Request, cursor: int | None) -> str | None:
    """The relative URL of the next page (same filters, ``cursor`` set), or None on the last page."""
    if cursor is None:
        return None
    url = request.url.include_query_params(cursor=cursor)
    return f"{url.path}?{url.query}"


def error_status(exc: BaseException) -> int:
    """The HTTP status for an error raised by a pipeline action."""
    if isinstance(exc, LookupError):
        return 404
    if isinstance(exc, QueueError):
        # The routes look the id up first, so a QueueError here is "already queued", not "unknown".
        return 409
    if isinstance(exc, BackPressureError):
        return 503
    if isinstance(exc, DeliveryError):
        return 502
    if isinstance(exc, EcgcadError):
        return 409
    return 500


def outcome_of(status: int) -> int:
    """DICOM audit outcome for an HTTP status: 0 success, 4 minor (refused / not found), 8 serious."""
    if status < 400:
        return 0
    return 4 if status < 500 else 8


# -- ECGs ---------------------------------------------------------------------------------------------------


@router.get("/ecgs", tags=["results"])
def list_ecgs(
    request: Request,
    patient_id: str | None = Query(None, description="Patient ID (0010,0020), exact."),
    accession_number: str | None = Query(None, description="Accession Number (0008,0050), exact."),
    flagged: bool | None = Query(None, description="Current result flags any vessel (true) or none (false)."),
    vessel: Vessel | None = Query(None, description="Current result flags this vessel."),
    since: dt.datetime | None = Query(None, description="Received at or after (ISO 8601; naive = UTC)."),
    until: dt.datetime | None = Query(None, description="Received before (ISO 8601; naive = UTC)."),
    state: str | None = Query(None, description="received | queued | scored | not_evaluated | failed."),
    limit: int = Query(50, ge=1, le=queries.MAX_PAGE, description="Page size."),
    cursor: Cursor = None,
    principal: Principal = Depends(require(EVERYONE)),
) -> dict[str, Any]:
    """ECGs with identifiers, state, current result (probabilities, flags, model version) and deliveries.

    Newest first; ``next`` is the URL of the following page or null.
    """
    filters = queries.EcgFilters(patient_id, accession_number, flagged, vessel, since, until, state)
    with _ctx(request).db.session() as s:
        items, nxt = queries.list_ecgs(s, filters, limit=limit, cursor=cursor)
        queries.audit_access(
            s,
            principal,
            "api.query",
            _what(request),
            patient_id=patient_id,
            query=filters.describe(),
            detail={"count": len(items), "ecg_ids": [i["id"] for i in items]},
        )
    return {"items": items, "next": next_link(request, nxt)}


@router.get("/ecgs/{ecg_id}", tags=["results"])
def get_ecg(
    request: Request, ecg_id: int, principal: Principal = Depends(require(EVERYONE))
) -> dict[str, Any]:
    """One ECG with all its results, their deliveries and its audit trail."""
    with _ctx(request).db.session() as s:
        ecg = queries.get_ecg(s, ecg_id)
        if ecg is None:
            queries.audit_access(
                s, principal, "api.read", _what(request), outcome=4, detail={"ecg_id": ecg_id}
            )
        else:
            detail = queries.ecg_detail(s, ecg)
            queries.audit_access(s, principal, "api.read", _what(request), ecg=ecg)
    if ecg is None:
        raise HTTPException(404, f"no ECG {ecg_id}")
    return detail


@router.get(
    "/ecgs/{ecg_id}/report.pdf",
    tags=["results"],
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
def get_report(request: Request, ecg_id: int, principal: Principal = Depends(require(EVERYONE))) -> Response:
    """The ECG's current report as PDF."""
    ctx = _ctx(request)
    with ctx.db.session() as s:
        ecg = queries.get_ecg(s, ecg_id)
    status, message, data = 200, "", b""
    if ecg is None:
        status, message = 404, f"no ECG {ecg_id}"
    else:
        try:
            data = actions.report_pdf(ctx, ecg_id)
        except Exception as exc:  # noqa: BLE001 - translated to a status and audited below
            status, message = error_status(exc), str(exc)
            if status == 500:
                logger.exception("report for ECG %s failed", ecg_id)
                message = "internal error"
    with ctx.db.session() as s:
        queries.audit_access(
            s,
            principal,
            "api.read",
            _what(request),
            ecg=ecg,
            outcome=outcome_of(status),
            detail={"object": "report.pdf", "ecg_id": ecg_id, **({"error": message} if message else {})},
        )
    if status != 200:
        raise HTTPException(status, message)
    return Response(data, media_type="application/pdf", headers={"Cache-Control": "no-store"})


def run_action(
    request: Request,
    principal: Principal,
    name: str,
    ecg: EcgRecord | None,
    target: dict[str, Any],
    call: Callable[[], dict[str, Any] | None],
) -> tuple[int, dict[str, Any]]:
    """Run a pipeline action, audit it (``api.action`` with outcome) and return (HTTP status, body)."""
    ctx = _ctx(request)
    try:
        body = dict(call() or {})
        status = 200
    except Exception as exc:  # noqa: BLE001 - translated to a status and audited below
        status = error_status(exc)
        message = str(exc) if status != 500 else "internal error"
        if status == 500:
            logger.exception("action %s failed", name)
        body = {"detail": message}
    with ctx.db.session() as s:
        queries.audit_access(
            s,
            principal,
            "api.action",
            _what(request),
            ecg=ecg,
            outcome=outcome_of(status),
            detail={"action": name, **target, **({"error": body["detail"]} if status != 200 else {})},
        )
    return status, body


def audit_missing(request: Request, principal: Principal, event: str, detail: dict[str, Any]) -> None:
    """Audit a call that named something that does not exist (outcome 4)."""
    with _ctx(request).db.session() as s:
        queries.audit_access(s, principal, event, _what(request), outcome=4, detail=detail)


def rescore_action(request: Request, principal: Principal, ecg: EcgRecord) -> tuple[int, dict[str, Any]]:
    """Queue a rescore of ``ecg`` for ``principal`` (audited); shared by the API and the dashboard."""
    ctx = _ctx(request)
    return run_action(
        request,
        principal,
        "rescore",
        ecg,
        {"ecg_id": ecg.id},
        lambda: actions.rescore_ecg(
            ctx, ecg.id, user=principal.user, role=principal.role, address=principal.address
        ),
    )


def resend_action(
    request: Request, principal: Principal, delivery: Delivery, ecg: EcgRecord
) -> tuple[int, dict[str, Any]]:
    """Queue a resend of ``delivery`` for ``principal`` (audited); shared by the API and the dashboard."""
    ctx = _ctx(request)
    return run_action(
        request,
        principal,
        "resend",
        ecg,
        {
            "delivery_id": delivery.id,
            "destination": delivery.destination,
            "object_kind": delivery.object_kind,
        },
        lambda: actions.resend_delivery(
            ctx, delivery.id, user=principal.user, role=principal.role, address=principal.address
        ),
    )


@router.post("/ecgs/{ecg_id}/rescore", tags=["actions"])
def rescore(
    request: Request, ecg_id: int, principal: Principal = Depends(require(OPERATORS))
) -> JSONResponse:
    """Score the ECG again with the active model (a new result version; deliveries follow)."""
    with _ctx(request).db.session() as s:
        ecg = queries.get_ecg(s, ecg_id)
    if ecg is None:
        audit_missing(request, principal, "api.action", {"action": "rescore", "ecg_id": ecg_id})
        raise HTTPException(404, f"no ECG {ecg_id}")
    status, body = rescore_action(request, principal, ecg)
    return JSONResponse(body, status_code=status)


# -- deliveries ---------------------------------------------------------------------------------------------


@router.get("/deliveries", tags=["deliveries"])
def list_deliveries(
    request: Request,
    state: str | None = Query(None, description="pending | sending | sent | retrying | failed."),
    destination: str | None = Query(None, description="Destination name from the settings."),
    limit: int = Query(100, ge=1, le=queries.MAX_PAGE),
    cursor: Cursor = None,
    principal: Principal = Depends(require(OPERATORS)),
) -> dict[str, Any]:
    """Deliveries, newest first, with their ECG, Patient ID and Accession Number."""
    with _ctx(request).db.session() as s:
        items, nxt = queries.list_deliveries(
            s, state=state, destination=destination, limit=limit, cursor=cursor
        )
        q = "&".join(f"{k}={v}" for k, v in (("state", state), ("destination", destination)) if v is not None)
        queries.audit_access(
            s,
            principal,
            "api.query",
            _what(request),
            query=q,
            detail={"count": len(items), "ecg_ids": sorted({i["ecg_id"] for i in items})},
        )
    return {"items": items, "next": next_link(request, nxt)}


@router.post("/deliveries/{delivery_id}/resend", tags=["actions"])
def resend(
    request: Request, delivery_id: int, principal: Principal = Depends(require(OPERATORS))
) -> JSONResponse:
    """Send the delivery's object to its destination again."""
    with _ctx(request).db.session() as s:
        found = queries.get_delivery(s, delivery_id)
    if found is None:
        audit_missing(request, principal, "api.action", {"action": "resend", "delivery_id": delivery_id})
        raise HTTPException(404, f"no delivery {delivery_id}")
    status, body = resend_action(request, principal, *found)
    return JSONResponse(body, status_code=status)


# -- jobs and models ----------------------------------------------------------------------------------------


@router.get("/jobs", tags=["jobs"])
def jobs(request: Request, principal: Principal = Depends(require(OPERATORS))) -> dict[str, Any]:
    """Job counts by state, depth, oldest waiting age (s) and failed jobs with their errors."""
    ctx = _ctx(request)
    summary = queries.jobs_summary(ctx.queue)
    with ctx.db.session() as s:
        queries.audit_access(
            s, principal, "api.query", _what(request), detail={"failed": len(summary["failed"])}
        )
    return summary


@router.post("/jobs/{job_id}/retry", tags=["actions"])
def retry_job(
    request: Request, job_id: int, principal: Principal = Depends(require(OPERATORS))
) -> JSONResponse:
    """Queue a failed (dead-letter) job again."""
    ctx = _ctx(request)
    job = ctx.queue.get(job_id) if fits_int64(job_id) else None
    body: dict[str, Any]
    if job is None:
        status, body = 404, {"detail": f"no job {job_id}"}
    else:
        try:
            ctx.queue.retry(job_id)
            status, body = 200, {"job_id": job_id, "state": "queued"}
        except EcgcadError as exc:
            status, body = 409, {"detail": str(exc)}
    ecg = None
    ecg_id = (job or {}).get("payload", {}).get("ecg_id")
    with ctx.db.session() as s:
        if isinstance(ecg_id, int):
            ecg = queries.get_ecg(s, ecg_id)
        queries.audit_access(
            s,
            principal,
            "api.action",
            _what(request),
            ecg=ecg,
            outcome=outcome_of(status),
            detail={
                "action": "retry",
                "job_id": job_id,
                **({"error": body["detail"]} if status != 200 else {}),
            },
        )
    return JSONResponse(body, status_code=status)


@router.get("/models", tags=["models"])
def models(request: Request, principal: Principal = Depends(require(EVERYONE))) -> dict[str, Any]:
    """Model versions (name, version, checkpoint SHA-256, role) and which are active and shadow."""
    with _ctx(request).db.session() as s:
        out = queries.list_models(s)
        queries.audit_access(s, principal, "api.read", _what(request), detail={"count": len(out["items"])})
    return out


# -- audit --------------------------------------------------------------------------------------------------


@router.get(
    "/audit",
    tags=["audit"],
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def audit_log(
    request: Request,
    patient_id: str | None = Query(None, description="Patient ID of the participant object."),
    user: str | None = Query(None, description="Token name / user of the active participant."),
    event: str | None = Query(None, description="Event type (api.read) or DICOM event ID (110101)."),
    since: dt.datetime | None = Query(None, description="At or after (ISO 8601; naive = UTC)."),
    until: dt.datetime | None = Query(None, description="Before (ISO 8601; naive = UTC)."),
    format: Literal["json", "csv"] = Query("json", description="json or csv."),
    limit: int = Query(1000, ge=1, le=10000),
    cursor: Cursor = None,
    principal: Principal = Depends(require(ADMIN)),
) -> Response:
    """Query the audit trail (admin only). Reading it records a DICOM 110101 "Audit Log Used" event."""
    filters = audit.AuditQuery(patient_id=patient_id, user=user, event=event, since=since, until=until)
    with _ctx(request).db.session() as s:
        events = audit.query_events(s, filters, limit=limit, before_id=cursor)
        more = len(events) == limit
        body: Any = (
            audit.events_to_csv(events)
            if format == "csv"
            else {"items": [audit.event_as_dict(e) for e in events]}
        )
        queries.audit_access(
            s,
            principal,
            "audit.read",
            _what(request),
            patient_id=patient_id,
            query=filters.describe(),
            detail={"count": len(events), "format": format},
        )
    if format == "csv":
        return Response(
            body,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    body["next"] = next_link(request, events[-1].id if more and events else None)
    return JSONResponse(body)
