"""The web dashboard: server-rendered pages (Jinja) over the same read models and audit events as the API.

Login takes an API token and keeps it in an HttpOnly, SameSite=Strict cookie; every page re-checks it, so a
revoked token logs its sessions out. Every form that changes something (login and logout included) carries a
CSRF token and is checked with its Origin / Sec-Fetch-Site (:mod:`ecgcad.api.security`). Pages: overview ``/``, results ``/ecgs`` and ``/ecgs/{id}``,
deliveries ``/deliveries`` (operators), audit ``/audit`` (admins). Forms post back and redirect with a
short message.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import undefer

from ecgcad import __version__
from ecgcad.api import queries
from ecgcad.api.auth import ADMIN, COOKIE_NAME, EVERYONE, OPERATORS, Principal, authenticate
from ecgcad.api.deps import client_address, require_page
from ecgcad.api.params import Cursor
from ecgcad.api.security import CSRF_COOKIE, csrf_context, csrf_guard, new_login_csrf
from ecgcad.api.v1 import outcome_of, rescore_action, resend_action
from ecgcad.db import audit
from ecgcad.db.models import SourceObject
from ecgcad.errors import EcgcadError

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"), context_processors=[csrf_context])
router = APIRouter(include_in_schema=False, dependencies=[Depends(csrf_guard)])

SESSION_MAX_AGE_S = 12 * 3600


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _what(request: Request) -> str:
    return f"{request.method} {request.url.path}"


def _page(request: Request, name: str, principal: Principal | None, **context: object) -> HTMLResponse:
    context.update(
        principal=principal,
        version=__version__,
        message=request.query_params.get("msg"),
        can_operate=principal is not None and principal.role in OPERATORS,
        is_admin=principal is not None and principal.role in ADMIN,
    )
    return templates.TemplateResponse(request, name, context)


def _redirect(path: str, message: str | None = None) -> RedirectResponse:
    if message:
        path = f"{path}{'&' if '?' in path else '?'}{urlencode({'msg': message})}"
    return RedirectResponse(path, status_code=303)


def _opt(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _when(value: str | None) -> dt.datetime | None:
    value = _opt(value)
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


# -- login ----------------------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    """The login page (paste an API token); sets the pre-session CSRF cookie its form is checked against."""
    value = request.cookies.get(CSRF_COOKIE) or new_login_csrf()
    request.state.login_csrf = value
    response = _page(request, "login.html", None, error=request.query_params.get("error"))
    if request.cookies.get(CSRF_COOKIE) != value:
        response.set_cookie(
            CSRF_COOKIE,
            value,
            max_age=SESSION_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
    return response


@router.post("/login")
def login(request: Request, token: str = Form("")) -> Response:
    """Check the token; on success set the session cookie and go to the overview."""
    ctx = _ctx(request)
    address = client_address(request)
    with ctx.db.session() as s:
        row = authenticate(s, token.strip())
        if row is None:
            audit.record(
                s,
                "auth.failed",
                outcome=4,
                address=address,
                query="POST /login",
                detail={"reason": "bad token"},
            )
        else:
            audit.record(s, "auth.login", user=row.name, role=row.role, address=address, query="POST /login")
    if row is None:
        return _redirect("/login?" + urlencode({"error": "That token is not valid."}))
    response = _redirect("/")
    response.set_cookie(
        COOKIE_NAME,
        token.strip(),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request, principal: Principal = Depends(require_page(EVERYONE))) -> Response:
    """End the dashboard session."""
    with _ctx(request).db.session() as s:
        audit.record(s, "auth.logout", user=principal.user, role=principal.role, address=principal.address)
    response = _redirect("/login")
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


# -- overview and results ---------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, principal: Principal = Depends(require_page(EVERYONE))) -> HTMLResponse:
    """Today's counts, flags per vessel, queue and failing deliveries (no patient identifiers)."""
    ctx = _ctx(request)
    jobs = queries.jobs_summary(ctx.queue, failed_limit=0)
    with ctx.db.session() as s:
        data = queries.overview(s, jobs)
    return _page(request, "overview.html", principal, o=data, vessels=queries.VESSELS)


@router.get("/ecgs", response_class=HTMLResponse)
def results(
    request: Request,
    patient_id: str | None = None,
    accession_number: str | None = None,
    flagged: str | None = None,
    vessel: str | None = None,
    state: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: Cursor = None,
    principal: Principal = Depends(require_page(EVERYONE)),
) -> HTMLResponse:
    """Results list with filters."""
    filters = queries.EcgFilters(
        patient_id=_opt(patient_id),
        accession_number=_opt(accession_number),
        flagged={"true": True, "false": False}.get(flagged or ""),
        vessel=vessel if vessel in queries.VESSELS else None,
        since=_when(since),
        until=_when(until),
        state=state if state in queries.ECG_STATES else None,
    )
    with _ctx(request).db.session() as s:
        items, nxt = queries.list_ecgs(s, filters, limit=50, cursor=cursor)
        queries.audit_access(
            s,
            principal,
            "api.query",
            _what(request),
            patient_id=filters.patient_id,
            query=filters.describe(),
            detail={"count": len(items), "ecg_ids": [i["id"] for i in items]},
        )
    form = {k: v or "" for k, v in request.query_params.items() if k not in ("cursor", "msg")}
    next_url = f"/ecgs?{urlencode({**form, 'cursor': nxt})}" if nxt is not None else None
    return _page(
        request,
        "ecgs.html",
        principal,
        items=items,
        form=form,
        next_url=next_url,
        vessels=queries.VESSELS,
        states=queries.ECG_STATES,
    )


@router.get("/ecgs/{ecg_id}", response_class=HTMLResponse)
def result_detail(
    request: Request, ecg_id: int, principal: Principal = Depends(require_page(EVERYONE))
) -> HTMLResponse:
    """One ECG: identifiers, tracing, probabilities and flags, deliveries, audit trail."""
    with _ctx(request).db.session() as s:
        ecg = queries.get_ecg(s, ecg_id)
        if ecg is None:
            queries.audit_access(
                s, principal, "api.read", _what(request), outcome=4, detail={"ecg_id": ecg_id}
            )
            item = None
        else:
            item = queries.ecg_detail(s, ecg, audit_limit=50)
            queries.audit_access(s, principal, "api.read", _what(request), ecg=ecg)
    if item is None:
        response = _page(request, "error.html", principal, title="Not found", text=f"No ECG {ecg_id}.")
        response.status_code = 404
        return response
    return _page(request, "ecg.html", principal, e=item, vessels=queries.VESSELS)


@router.get("/ecgs/{ecg_id}/tracing.png")
def tracing(
    request: Request, ecg_id: int, principal: Principal = Depends(require_page(EVERYONE))
) -> Response:
    """The ECG's 12-lead tracing rendered from the stored source object."""
    from ecgcad.api.tracing import tracing_png

    ctx = _ctx(request)
    with ctx.db.session() as s:
        ecg = queries.get_ecg(s, ecg_id)
        source = (
            s.get(SourceObject, ecg.source_object_id, options=[undefer(SourceObject.content)])
            if ecg is not None
            else None
        )
    status, data = 200, b""
    if ecg is None or source is None:
        status = 404
    else:
        try:
            data = tracing_png(ctx, ecg, source)
        except EcgcadError as exc:
            logger.info("no tracing for ECG %s: %s", ecg_id, type(exc).__name__)
            status = 404
    with ctx.db.session() as s:
        queries.audit_access(
            s,
            principal,
            "api.read",
            _what(request),
            ecg=ecg,
            outcome=outcome_of(status),
            detail={"object": "tracing.png", "ecg_id": ecg_id},
        )
    if status != 200:
        return Response(status_code=status)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.post("/ecgs/{ecg_id}/rescore")
def rescore(
    request: Request, ecg_id: int, principal: Principal = Depends(require_page(OPERATORS))
) -> Response:
    """Rescore from the detail page."""
    ctx = _ctx(request)
    with ctx.db.session() as s:
        ecg = queries.get_ecg(s, ecg_id)
    if ecg is None:
        return _redirect("/ecgs", f"No ECG {ecg_id}.")
    status, body = rescore_action(request, principal, ecg)
    text = "Rescore queued." if status == 200 else f"Rescore failed: {body.get('detail')}"
    return _redirect(f"/ecgs/{ecg_id}", text)


# -- deliveries -------------------------------------------------------------------------------------------------


@router.get("/deliveries", response_class=HTMLResponse)
def deliveries(
    request: Request,
    state: str | None = None,
    destination: str | None = None,
    cursor: Cursor = None,
    principal: Principal = Depends(require_page(OPERATORS)),
) -> HTMLResponse:
    """Deliveries with state / destination filters and a resend button."""
    state, destination = _opt(state), _opt(destination)
    ctx = _ctx(request)
    with ctx.db.session() as s:
        items, nxt = queries.list_deliveries(
            s, state=state, destination=destination, limit=100, cursor=cursor
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
    form = {"state": state or "", "destination": destination or ""}
    next_url = f"/deliveries?{urlencode({**form, 'cursor': nxt})}" if nxt is not None else None
    return _page(
        request,
        "deliveries.html",
        principal,
        items=items,
        form=form,
        next_url=next_url,
        states=queries.DELIVERY_STATES,
        destinations=[d.name for d in ctx.settings.destinations],
    )


@router.post("/deliveries/{delivery_id}/resend")
def resend(
    request: Request,
    delivery_id: int,
    back: str = Form("/deliveries"),
    principal: Principal = Depends(require_page(OPERATORS)),
) -> Response:
    """Resend from the deliveries or detail page, then go back there."""
    ctx = _ctx(request)
    back = back if back.startswith("/") and not back.startswith("//") else "/deliveries"
    with ctx.db.session() as s:
        found = queries.get_delivery(s, delivery_id)
    if found is None:
        return _redirect(back, f"No delivery {delivery_id}.")
    delivery, ecg = found
    status, body = resend_action(request, principal, delivery, ecg)
    if status == 200:
        text = f"Delivery {delivery_id} to {delivery.destination}: resend {body.get('state', 'requested')}."
    else:
        text = f"Resend of delivery {delivery_id} failed: {body.get('detail')}"
    return _redirect(back, text)


# -- audit ------------------------------------------------------------------------------------------------------


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    patient_id: str | None = None,
    user: str | None = None,
    event: str | None = None,
    since: str | None = None,
    until: str | None = None,
    principal: Principal = Depends(require_page(ADMIN)),
) -> HTMLResponse:
    """Audit trail query (admins); each query is itself recorded as 110101 Audit Log Used."""
    filters = audit.AuditQuery(
        patient_id=_opt(patient_id),
        user=_opt(user),
        event=_opt(event),
        since=_when(since),
        until=_when(until),
    )
    with _ctx(request).db.session() as s:
        events = [audit.event_as_dict(e) for e in audit.query_events(s, filters, limit=200)]
        queries.audit_access(
            s,
            principal,
            "audit.read",
            _what(request),
            patient_id=filters.patient_id,
            query=filters.describe(),
            detail={"count": len(events), "format": "html"},
        )
    form = {
        "patient_id": patient_id or "",
        "user": user or "",
        "event": event or "",
        "since": since or "",
        "until": until or "",
    }
    csv_url = "/api/v1/audit?" + urlencode({**{k: v for k, v in form.items() if v}, "format": "csv"})
    return _page(
        request,
        "audit.html",
        principal,
        events=events,
        form=form,
        csv_url=csv_url,
        event_types=sorted(audit.EVENT_CODES),
    )
