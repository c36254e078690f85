"""The audit trail: append-only, hash-chained events shaped after the DICOM / IHE ATNA audit message.

Each event's ``hash`` is SHA-256 over the previous event's hash and a canonical JSON of the event's fields,
so that changing, inserting or removing a row breaks the chain from that row on; :func:`verify_chain`
finds the first broken link. The table also refuses UPDATE and DELETE with a trigger (see migration 0001).

Event IDs are the DICOM codes (PS3.15 / DCM): see :data:`EVENT_CODES`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ecgcad.db.models import AuditEvent, utcnow

GENESIS = "0" * 64

#: Our event types → (DICOM event ID code, action). Action: C create, R read, U update, D delete, E execute.
EVENT_CODES: dict[str, tuple[str, str]] = {
    "application.start": ("110100", "E"),
    "application.stop": ("110100", "E"),
    "audit.read": ("110101", "R"),
    "dicom.association": ("110100", "E"),
    "dicom.rejected": ("110113", "E"),
    "dicom.received": ("110104", "C"),
    "dicom.new_version": ("110104", "C"),
    "hl7.connection": ("110100", "E"),
    "hl7.received": ("110107", "C"),
    "hl7.rejected": ("110113", "E"),
    "ecg.scored": ("110110", "C"),
    "ecg.not_evaluated": ("110110", "C"),
    "ecg.rescore": ("110110", "U"),
    "delivery.sent": ("110106", "R"),
    "delivery.failed": ("110106", "R"),
    "delivery.resend": ("110106", "E"),
    "api.read": ("110110", "R"),
    "api.query": ("110112", "E"),
    "api.action": ("110110", "E"),
    "auth.failed": ("110114", "E"),
    "token.created": ("110113", "C"),
    "token.revoked": ("110113", "D"),
    "config.changed": ("110100", "U"),
    "model.promoted": ("110100", "U"),
    "model.rollback": ("110100", "U"),
    "retention.deleted": ("110105", "D"),
    "cli.action": ("110110", "E"),
}

_HASHED_FIELDS = (
    "event_id",
    "event_type",
    "action",
    "outcome",
    "occurred_at",
    "user",
    "role",
    "ae_title",
    "address",
    "patient_id",
    "issuer_of_patient_id",
    "study_instance_uid",
    "sop_instance_uid",
    "ecg_id",
    "query",
    "detail",
)


def _canonical(event: AuditEvent) -> bytes:
    data: dict[str, Any] = {}
    for name in _HASHED_FIELDS:
        value = getattr(event, name)
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            value = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        data[name] = value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def event_hash(prev_hash: str, event: AuditEvent) -> str:
    """The chained hash of ``event`` after ``prev_hash``."""
    return hashlib.sha256(prev_hash.encode() + _canonical(event)).hexdigest()


def record(
    session: Session,
    event_type: str,
    *,
    outcome: int = 0,
    user: str | None = None,
    role: str | None = None,
    ae_title: str | None = None,
    address: str | None = None,
    patient_id: str | None = None,
    issuer_of_patient_id: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    ecg_id: int | None = None,
    query: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an audit event in the caller's transaction.

    Parameters
    ----------
    session:
        The caller's session; the event commits (or rolls back) with the caller's work.
    event_type:
        One of :data:`EVENT_CODES`.
    outcome:
        0 success, 4 minor failure, 8 serious failure, 12 major failure.
    """
    code, action = EVENT_CODES.get(event_type, ("110100", "E"))
    if session.get_bind().dialect.name == "postgresql":
        # Serialise appends so that the chain is linear (SQLite serialises with BEGIN IMMEDIATE).
        session.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
    prev = session.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).scalar()
    now = utcnow()
    event = AuditEvent(
        event_id=code,
        event_type=event_type,
        action=action,
        outcome=outcome,
        occurred_at=now,
        user=user,
        role=role,
        ae_title=ae_title,
        address=address,
        patient_id=patient_id,
        issuer_of_patient_id=issuer_of_patient_id,
        study_instance_uid=study_instance_uid,
        sop_instance_uid=sop_instance_uid,
        ecg_id=ecg_id,
        query=query,
        detail=detail,
        prev_hash=prev or GENESIS,
    )
    event.hash = event_hash(event.prev_hash, event)
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of :func:`verify_chain`."""

    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str | None = None


def verify_chain(events: Iterable[AuditEvent]) -> ChainReport:
    """Check the hash chain over events in id order; report the first broken link."""
    prev = GENESIS
    n = 0
    for event in events:
        n += 1
        if event.prev_hash != prev:
            return ChainReport(False, n, event.id, "prev_hash does not match the previous event (row removed or inserted)")
        if event_hash(prev, event) != event.hash:
            return ChainReport(False, n, event.id, "content does not match its hash (row changed)")
        prev = event.hash
    return ChainReport(True, n)


def verify_session(session: Session, batch: int = 5000) -> ChainReport:
    """Verify the whole chain stored in the database."""
    return verify_chain(session.execute(select(AuditEvent).order_by(AuditEvent.id).execution_options(yield_per=batch)).scalars())
