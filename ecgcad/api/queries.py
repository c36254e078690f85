"""Read models for the API and the dashboard: ECGs with their current result and deliveries, deliveries,
jobs, models, the overview — and :func:`audit_access`, which records who read what.

Both the JSON routes and the dashboard pages call these functions, so that both write the same audit events.
The *current* result of an ECG is its newest non-shadow result.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, Subquery, func, select
from sqlalchemy.orm import Session

from ecgcad.api.auth import Principal
from ecgcad.api.params import fits_int64
from ecgcad.db import audit
from ecgcad.db.models import Delivery, EcgRecord, ModelVersion, Result, utcnow
from ecgcad.vessels import VESSELS

if TYPE_CHECKING:
    from ecgcad.jobs.queue import JobQueue

ECG_STATES: tuple[str, ...] = ("received", "queued", "scored", "not_evaluated", "failed")
DELIVERY_STATES: tuple[str, ...] = ("pending", "sending", "sent", "retrying", "failed")
FAILING_DELIVERY_STATES: tuple[str, ...] = ("retrying", "failed")
MAX_PAGE = 500


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def audit_access(
    session: Session,
    principal: Principal,
    event_type: str,
    what: str,
    *,
    ecg: EcgRecord | None = None,
    outcome: int = 0,
    patient_id: str | None = None,
    query: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Record one access by ``principal`` (who, role, when, what, which patient/study/ECG, outcome, address);
    the audit event's id.

    Parameters
    ----------
    session:
        The request's transaction.
    principal:
        The caller.
    event_type:
        ``api.read`` (one object), ``api.query`` (a search), ``api.action`` (a change), ``audit.read``.
    what:
        The request, e.g. ``GET /api/v1/ecgs/7``.
    ecg:
        The ECG concerned; its patient, study and SOP instance become participant objects.
    """
    info = {"what": what, **(detail or {})}
    return audit.record(
        session,
        event_type,
        outcome=outcome,
        user=principal.user,
        role=principal.role,
        address=principal.address,
        patient_id=ecg.patient_id if ecg is not None else patient_id,
        issuer_of_patient_id=ecg.issuer_of_patient_id if ecg is not None else None,
        study_instance_uid=ecg.study_instance_uid if ecg is not None else None,
        sop_instance_uid=ecg.sop_instance_uid if ecg is not None else None,
        ecg_id=ecg.id if ecg is not None else None,
        query=query,
        detail=info,
    )


# -- serialisers --------------------------------------------------------------------------------------------


def result_dict(result: Result) -> dict[str, Any]:
    """A result: probabilities, flags, risk bands, thresholds and the model that produced it."""
    return {
        "id": result.id,
        "scorable": result.scorable,
        "reason_code": result.reason_code,
        "reason_text": result.reason_text,
        "probabilities": result.probabilities(),
        "flags": result.flags(),
        "any_flagged": result.any_flagged,
        "risk_bands": result.risk_bands,
        "thresholds": result.thresholds,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "checkpoint_sha256": result.checkpoint_sha256,
        "demonstration": result.demonstration,
        "shadow": result.shadow,
        "result_version": result.result_version,
        "created_at": _iso(result.created_at),
    }


def delivery_dict(delivery: Delivery) -> dict[str, Any]:
    """A delivery's destination, object kind and state."""
    return {
        "id": delivery.id,
        "result_id": delivery.result_id,
        "destination": delivery.destination,
        "object_kind": delivery.object_kind,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_response": delivery.last_response,
        "next_attempt_at": _iso(delivery.next_attempt_at),
        "sent_at": _iso(delivery.sent_at),
        "object_uid": delivery.object_uid,
        "updated_at": _iso(delivery.updated_at),
    }


def ecg_item(ecg: EcgRecord, result: Result | None, deliveries: list[Delivery]) -> dict[str, Any]:
    """One ECG as listed: identifiers, state, current result and its delivery states."""
    item: dict[str, Any] = {"id": ecg.id}
    for name in EcgRecord.IDENTIFIER_COLUMNS:
        item[name] = getattr(ecg, name)
    item.update(
        {
            "acquisition_datetime": _iso(ecg.acquisition_datetime),
            "received_at": _iso(ecg.received_at),
            "format": ecg.format,
            "state": ecg.state,
            "decode_status": ecg.decode_status,
            "gate_status": ecg.gate_status,
            "gate_reasons": ecg.gate_reasons,
            "result": result_dict(result) if result is not None else None,
            "deliveries": [delivery_dict(d) for d in deliveries],
        }
    )
    return item


# -- ECGs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EcgFilters:
    """Filters of ``GET /api/v1/ecgs`` (AND-combined).

    ``flagged`` and ``vessel`` look at the current result: ``flagged=true`` → any vessel flagged;
    ``vessel=lad`` → the LAD is flagged (``flagged=false`` with it: scored and the LAD not flagged);
    ``flagged=false`` alone → scored and no vessel flagged. ``since``/``until`` bound the time received.
    """

    patient_id: str | None = None
    accession_number: str | None = None
    flagged: bool | None = None
    vessel: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    state: str | None = None

    def describe(self) -> str:
        """The filters as ``key=value&…`` for the audit event's query."""
        parts = []
        for name in ("patient_id", "accession_number", "flagged", "vessel", "since", "until", "state"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, dt.datetime):
                    value = value.isoformat()
                elif isinstance(value, bool):
                    value = str(value).lower()
                parts.append(f"{name}={value}")
        return "&".join(parts)


def _current_result_ids() -> Subquery:
    return (
        select(Result.ecg_id.label("ecg_id"), func.max(Result.id).label("result_id"))
        .where(Result.shadow.is_(False))
        .group_by(Result.ecg_id)
        .subquery()
    )


def _ecg_select(filters: EcgFilters) -> Select[EcgRecord, Result]:
    cur = _current_result_ids()
    stmt = (
        select(EcgRecord, Result)
        .outerjoin(cur, cur.c.ecg_id == EcgRecord.id)
        .outerjoin(Result, Result.id == cur.c.result_id)
    )
    if filters.patient_id is not None:
        stmt = stmt.where(EcgRecord.patient_id == filters.patient_id)
    if filters.accession_number is not None:
        stmt = stmt.where(EcgRecord.accession_number == filters.accession_number)
    if filters.state is not None:
        stmt = stmt.where(EcgRecord.state == filters.state)
    if filters.since is not None:
        stmt = stmt.where(EcgRecord.received_at >= _utc(filters.since))
    if filters.until is not None:
        stmt = stmt.where(EcgRecord.received_at < _utc(filters.until))
    if filters.vessel is not None:
        column = getattr(Result, f"flag_{filters.vessel}")
        if filters.flagged is False:
            stmt = stmt.where(Result.scorable.is_(True), column.is_(False))
        else:
            stmt = stmt.where(column.is_(True))
    elif filters.flagged is True:
        stmt = stmt.where(Result.any_flagged.is_(True))
    elif filters.flagged is False:
        stmt = stmt.where(Result.scorable.is_(True), Result.any_flagged.is_(False))
    return stmt


def _deliveries_for(session: Session, result_ids: list[int]) -> dict[int, list[Delivery]]:
    out: dict[int, list[Delivery]] = {rid: [] for rid in result_ids}
    if result_ids:
        rows = session.execute(
            select(Delivery).where(Delivery.result_id.in_(result_ids)).order_by(Delivery.id)
        ).scalars()
        for d in rows:
            out[d.result_id].append(d)
    return out


def list_ecgs(
    session: Session, filters: EcgFilters, *, limit: int = 50, cursor: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """ECGs matching ``filters``, newest first, and the cursor of the next page (None on the last page)."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = _ecg_select(filters)
    if cursor is not None:
        stmt = stmt.where(EcgRecord.id < cursor)
    rows = session.execute(stmt.order_by(EcgRecord.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    deliveries = _deliveries_for(session, [r.id for _, r in rows if r is not None])
    items = [ecg_item(e, r, deliveries.get(r.id, []) if r is not None else []) for e, r in rows]
    return items, (rows[-1][0].id if more and rows else None)


def get_ecg(session: Session, ecg_id: int) -> EcgRecord | None:
    """The ECG row or None (also for an id no row can have, beyond 64 bits)."""
    return session.get(EcgRecord, ecg_id) if fits_int64(ecg_id) else None


def ecg_detail(session: Session, ecg: EcgRecord, *, audit_limit: int = 500) -> dict[str, Any]:
    """One ECG with every result (shadow ones included), their deliveries and the ECG's audit trail."""
    results = list(
        session.execute(select(Result).where(Result.ecg_id == ecg.id).order_by(Result.id)).scalars()
    )
    current = next((r for r in reversed(results) if not r.shadow), None)
    deliveries = _deliveries_for(session, [r.id for r in results])
    item = ecg_item(ecg, current, deliveries.get(current.id, []) if current is not None else [])
    item.update(
        {
            "sampling_rate": ecg.sampling_rate,
            "duration_s": ecg.duration_s,
            "leads": ecg.leads,
            "derived_leads": ecg.derived_leads,
            "notes": ecg.notes,
            "decode_reason": ecg.decode_reason,
            "results": [
                {**result_dict(r), "deliveries": [delivery_dict(d) for d in deliveries[r.id]]}
                for r in results
            ],
            "audit_trail": [
                audit.event_as_dict(e)
                for e in audit.query_events(session, audit.AuditQuery(ecg_id=ecg.id), limit=audit_limit)
            ],
        }
    )
    return item


# -- deliveries ---------------------------------------------------------------------------------------------


def list_deliveries(
    session: Session,
    *,
    state: str | None = None,
    destination: str | None = None,
    limit: int = 100,
    cursor: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Deliveries, newest first, each with its ECG's id, Patient ID and Accession Number."""
    limit = max(1, min(limit, MAX_PAGE))
    stmt = (
        select(Delivery, Result.ecg_id, EcgRecord.patient_id, EcgRecord.accession_number)
        .join(Result, Result.id == Delivery.result_id)
        .join(EcgRecord, EcgRecord.id == Result.ecg_id)
    )
    if state is not None:
        stmt = stmt.where(Delivery.state == state)
    if destination is not None:
        stmt = stmt.where(Delivery.destination == destination)
    if cursor is not None:
        stmt = stmt.where(Delivery.id < cursor)
    rows = session.execute(stmt.order_by(Delivery.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {**delivery_dict(d), "ecg_id": ecg_id, "patient_id": pid, "accession_number": acc}
        for d, ecg_id, pid, acc in rows
    ]
    return items, (rows[-1][0].id if more and rows else None)


def get_delivery(session: Session, delivery_id: int) -> tuple[Delivery, EcgRecord] | None:
    """A delivery and its ECG, or None (also for an id no row can have, beyond 64 bits)."""
    if not fits_int64(delivery_id):
        return None
    row = session.execute(
        select(Delivery, EcgRecord)
        .join(Result, Result.id == Delivery.result_id)
        .join(EcgRecord, EcgRecord.id == Result.ecg_id)
        .where(Delivery.id == delivery_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


# -- jobs and models ----------------------------------------------------------------------------------------


def jobs_summary(queue: JobQueue, *, failed_limit: int = 100) -> dict[str, Any]:
    """Job counts by state, queue depth, oldest waiting age and the failed (dead-letter) jobs."""
    counts = queue.counts()
    failed = queue.failed_jobs(failed_limit)
    return {
        "counts": counts,
        "depth": int(counts.get("queued", 0)) + int(counts.get("running", 0)),
        "oldest_waiting_age_s": queue.oldest_waiting_age_s(),
        "failed": failed,
    }


def list_models(session: Session) -> dict[str, Any]:
    """Model versions the service has used, with the active and shadow ones named."""
    rows = list(session.execute(select(ModelVersion).order_by(ModelVersion.id)).scalars())
    items = [
        {
            "id": m.id,
            "name": m.name,
            "version": m.version,
            "checkpoint_sha256": m.checkpoint_sha256,
            "checkpoint_path": m.checkpoint_path,
            "demonstration": m.demonstration,
            "role": m.role,
            "metadata": m.model_metadata,
            "created_at": _iso(m.created_at),
        }
        for m in rows
    ]
    return {
        "items": items,
        "active": [m["version"] for m in items if m["role"] == "active"],
        "shadow": [m["version"] for m in items if m["role"] == "shadow"],
    }


# -- overview -----------------------------------------------------------------------------------------------


def overview(session: Session, jobs: dict[str, Any], *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Counts for the dashboard's front page (no patient identifiers): today is the current UTC day.

    ``jobs`` is :func:`jobs_summary`, taken before ``session`` opens: on SQLite a second transaction in the
    same thread would wait for the first one's lock.
    """
    now = now or utcnow()
    start = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    received = session.execute(select(func.count()).where(EcgRecord.received_at >= start)).scalar_one()
    by_state = dict(
        session.execute(
            select(EcgRecord.state, func.count())
            .where(EcgRecord.received_at >= start)
            .group_by(EcgRecord.state)
        ).all()
    )
    cur = _current_result_ids()
    today_current = (
        select(Result)
        .join(cur, cur.c.result_id == Result.id)
        .join(EcgRecord, EcgRecord.id == Result.ecg_id)
        .where(EcgRecord.received_at >= start)
        .subquery()
    )
    not_evaluated = {
        (reason or "unknown"): n
        for reason, n in session.execute(
            select(today_current.c.reason_code, func.count())
            .where(today_current.c.scorable.is_(False))
            .group_by(today_current.c.reason_code)
        ).all()
    }
    flagged = {
        v: session.execute(
            select(func.count()).select_from(today_current).where(today_current.c[f"flag_{v}"].is_(True))
        ).scalar_one()
        for v in VESSELS
    }
    any_flagged = session.execute(
        select(func.count()).select_from(today_current).where(today_current.c.any_flagged.is_(True))
    ).scalar_one()
    failing: dict[str, dict[str, int]] = {}
    for dest, state, n in session.execute(
        select(Delivery.destination, Delivery.state, func.count())
        .where(Delivery.state.in_(FAILING_DELIVERY_STATES))
        .group_by(Delivery.destination, Delivery.state)
    ).all():
        failing.setdefault(dest, {s: 0 for s in FAILING_DELIVERY_STATES})[state] = n
    from ecgcad.pipeline.delivery import CONTENT_ERROR_PREFIX

    content_errors = session.execute(
        select(func.count()).where(
            Delivery.state == "failed", Delivery.last_response.startswith(CONTENT_ERROR_PREFIX)
        )
    ).scalar_one()
    return {
        "day_start": start.isoformat(),
        "received_today": received,
        "scored_today": int(by_state.get("scored", 0)),
        "not_evaluated_today": int(by_state.get("not_evaluated", 0)),
        "not_evaluated_reasons": not_evaluated,
        "failed_today": int(by_state.get("failed", 0)),
        "flagged_today": flagged,
        "any_flagged_today": any_flagged,
        "queue_depth": jobs["depth"],
        "queue_counts": jobs["counts"],
        "oldest_waiting_age_s": jobs["oldest_waiting_age_s"],
        "failing_deliveries": failing,
        "content_errors": int(content_errors),
    }
