"""The audit trail: append-only, hash-chained events shaped after the DICOM / IHE ATNA audit message.

Each event's ``hash`` is an HMAC-SHA-256, keyed with a secret kept outside the database
(:mod:`ecgcad.db.audit_key`, named by the event's ``key_id``), over the previous event's hash and a
canonical JSON of the event's fields, so that changing, inserting or removing a row breaks the chain from
that row on, and whoever can write the table but lacks the key cannot recompute it; :func:`verify_chain`
finds the first broken link. Events written before keys existed (``key_id`` NULL) carry an unkeyed SHA-256
and still verify, but only before the first keyed event: an unkeyed event after a keyed one is a downgrade.
The chain cannot show that its last events were removed: signed checkpoints (event count and head hash,
:mod:`ecgcad.db.audit_checkpoint`), kept outside the table, can. The table also refuses UPDATE and DELETE
with a trigger (see migration 0001).

Event IDs are the DICOM codes (PS3.15 / DCM): see :data:`EVENT_CODES`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event as sa_event
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session, SessionTransaction

from ecgcad.db.models import AuditEvent, utcnow
from ecgcad.db.prepared import DirectInsert, Prepared, bound_to
from ecgcad.db.session import AUDIT_KEY_INFO, DirectTransaction

if TYPE_CHECKING:
    from ecgcad.db.audit_checkpoint import Checkpoint
    from ecgcad.db.audit_key import AuditKey

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
    "auth.login": ("110114", "E"),
    "auth.logout": ("110114", "E"),
    "auth.denied": ("110113", "E"),
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


def _canonical(event: AuditEvent | dict[str, Any]) -> bytes:
    data: dict[str, Any] = {}
    for name in _HASHED_FIELDS:
        value = event.get(name) if isinstance(event, dict) else getattr(event, name)
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            value = value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        data[name] = value
    return _CANONICAL_JSON.encode(data).encode()


#: ``json.dumps(…, sort_keys=True, separators=(",", ":"), default=str)``, built once.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def event_hash(prev_hash: str, event: AuditEvent | dict[str, Any], key: AuditKey | None = None) -> str:
    """The chained hash of ``event`` after ``prev_hash``: HMAC-SHA-256 with ``key``, else SHA-256.

    Parameters
    ----------
    prev_hash:
        The previous event's hash (:data:`GENESIS` for the first).
    event:
        The event, or its values.
    key:
        The chain's key; ``None`` for the unkeyed hash of events written before keys existed.

    Returns
    -------
    str
        64 hex digits.
    """
    message = prev_hash.encode() + _canonical(event)
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return key.mac(message)


def record(
    session: Session | DirectTransaction,
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
) -> int:
    """Append an audit event in the caller's transaction; its id.

    Parameters
    ----------
    session:
        The caller's session (or direct transaction); the event commits (or rolls back) with the caller's
        work.
    event_type:
        One of :data:`EVENT_CODES`.
    outcome:
        0 success, 4 minor failure, 8 serious failure, 12 major failure.

    Returns
    -------
    int
        The event's id (read it back with a query; building an ORM copy here cost the listeners ~50 µs per
        object received).
    """
    code, action = EVENT_CODES.get(event_type, ("110100", "E"))
    key: AuditKey | None = session.info.get(AUDIT_KEY_INFO)
    # Prepared statements on the session's connection: the same transaction, without the unit of work (an
    # audit row is written with every object received, so this is on the listeners' hot path).
    # The chain's tail: read once per transaction under the chain's lock, then carried in ``session.info``
    # (the lock is held to the end of the transaction; any rollback drops the carried value).
    prev = session.info.get(_TAIL_KEY)
    if prev is None:
        dialect, _ = bound_to(session)
        if dialect.name == "postgresql" and isinstance(session, Session):
            # Serialise appends so that the chain is linear (SQLite serialises with BEGIN IMMEDIATE).
            session.execute(_PG_CHAIN_LOCK)
        prev = _LAST_HASH.execute(session, {})
    values: dict[str, Any] = {
        "event_id": code,
        "event_type": event_type,
        "action": action,
        "outcome": outcome,
        "occurred_at": utcnow(),
        "user": user,
        "role": role,
        "ae_title": ae_title,
        "address": address,
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer_of_patient_id,
        "study_instance_uid": study_instance_uid,
        "sop_instance_uid": sop_instance_uid,
        "ecg_id": ecg_id,
        "query": query,
        "detail": detail,
        "prev_hash": prev or GENESIS,
        "key_id": None if key is None else key.key_id,
    }
    values["hash"] = event_hash(values["prev_hash"], values, key)
    if isinstance(session, DirectTransaction):
        event_id = int(_DIRECT_INSERT.execute(session, *[values[name] for name in _DIRECT_INSERT.columns]))
    else:
        event_id = int(_INSERT.execute(session, values))
    session.info[_TAIL_KEY] = values["hash"]
    return event_id


_TAIL_KEY = "ecgcad_audit_tail"


@sa_event.listens_for(Session, "after_transaction_end")
def _forget_tail(session: Session, transaction: SessionTransaction) -> None:
    """Any transaction or savepoint that ends (committed or rolled back) drops the carried tail."""
    session.info.pop(_TAIL_KEY, None)


_PG_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(4242001)")
_LAST_HASH = Prepared(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
_INSERT = Prepared(insert(AuditEvent).returning(AuditEvent.id))
_DIRECT_INSERT = DirectInsert(
    AuditEvent.__table__,  # type: ignore[arg-type]
    (*_HASHED_FIELDS, "prev_hash", "hash", "key_id"),
    returning="id",
)


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of :func:`verify_chain`.

    ``checked`` counts the events read; ``head`` and ``last_id`` are the last good event's hash and id
    (:data:`GENESIS` and 0 for an empty chain); ``first_broken_id`` is ``None`` when the fault is not one
    row (events missing at the end, a missing or invalid checkpoint).
    """

    ok: bool
    checked: int
    first_broken_id: int | None = None
    reason: str | None = None
    head: str = GENESIS
    last_id: int = 0
    #: The chain holds keyed events (then every later event must be keyed).
    keyed: bool = False


def verify_chain(
    events: Iterable[AuditEvent],
    key: AuditKey | None = None,
    *,
    checkpoint: Checkpoint | None = None,
    after: Checkpoint | None = None,
) -> ChainReport:
    """Check the hash chain over events in id order; report the first broken link.

    Parameters
    ----------
    events:
        The events in id order: all of them, or (with ``after``) those after ``after.last_id``.
    key:
        The chain's key: keyed events must name it (``None``: only unkeyed events verify).
    checkpoint:
        A checkpoint already checked for its signature (:meth:`Checkpoint.verify_signature`): the chain
        must reach its count, and its event number ``count`` must be its ``last_id`` with its ``head``.
    after:
        Continue a chain verified up to this checkpoint (its head is the first event's ``prev_hash``).

    Returns
    -------
    ChainReport
        The first fault found, or ``ok``.
    """
    prev = GENESIS if after is None else after.head
    n = 0 if after is None else after.count
    keyed = after is not None and after.keyed
    last_id = 0 if after is None else after.last_id
    want = checkpoint.count if checkpoint is not None and checkpoint.count > n else None
    for event in events:
        n += 1
        if event.prev_hash != prev:
            return _broken(n, event, "prev_hash does not match the previous event (row removed or inserted)")
        if event.key_id is None:
            if keyed:
                return _broken(n, event, "an unkeyed event after keyed ones (row rewritten without the key)")
            expected = event_hash(prev, event)
        elif key is None or event.key_id != key.key_id:
            configured = "no key is configured" if key is None else f"the configured key is {key.key_id}"
            return _broken(n, event, f"hashed with audit key {event.key_id}, but {configured}")
        else:
            keyed = True
            expected = key.mac(prev.encode() + _canonical(event))
        if expected != event.hash:
            return _broken(n, event, "content does not match its hash (row changed)")
        prev, last_id = event.hash, event.id
        if (
            n == want
            and checkpoint is not None
            and (event.id, event.hash) != (checkpoint.last_id, checkpoint.head)
        ):
            return _broken(
                n,
                event,
                f"event {n} is not the head of the checkpoint of {checkpoint.written_at} "
                f"(id {checkpoint.last_id}): events before it were removed, inserted or rewritten",
            )
    if want is not None and checkpoint is not None and n < want:
        return ChainReport(
            False,
            n,
            None,
            f"{n} events, but the checkpoint of {checkpoint.written_at} counts {checkpoint.count} "
            f"(up to id {checkpoint.last_id}): events removed from the end",
            prev,
            last_id,
            keyed,
        )
    return ChainReport(True, n, head=prev, last_id=last_id, keyed=keyed)


def _broken(n: int, event: AuditEvent, reason: str) -> ChainReport:
    return ChainReport(False, n, event.id, reason)


def verify_session(
    session: Session,
    batch: int = 5000,
    *,
    checkpoint: Checkpoint | None = None,
    after: Checkpoint | None = None,
) -> ChainReport:
    """Verify the chain stored in the database with the session's audit key (see :func:`verify_chain`).

    Parameters
    ----------
    session:
        A session of a :class:`~ecgcad.db.session.Database` (its key is in ``session.info``).
    batch:
        Events read per round trip.
    checkpoint, after:
        As :func:`verify_chain` (with ``after``, only the events after ``after.last_id`` are read).
    """
    stmt = select(AuditEvent)
    if after is not None:
        stmt = stmt.where(AuditEvent.id > after.last_id)
    return verify_chain(
        session.execute(stmt.order_by(AuditEvent.id).execution_options(yield_per=batch)).scalars(),
        session.info.get(AUDIT_KEY_INFO),
        checkpoint=checkpoint,
        after=after,
    )


# -- queries ---------------------------------------------------------------------------------------------

#: Columns of an exported event, in CSV order.
EXPORT_FIELDS = (
    "id",
    "occurred_at",
    "event_id",
    "event_type",
    "action",
    "outcome",
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
    "hash",
)


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for :func:`query_events`; every field is optional and they combine with AND.

    Parameters
    ----------
    patient_id:
        Exact Patient ID (0010,0020) of the participant object.
    user:
        Exact active-participant user (token name, ``cli:<login>``, AE title of a peer, ...).
    event:
        Our event type (``api.read``) or, when all digits, the DICOM event ID code (``110101``).
    since, until:
        Inclusive lower / exclusive upper bound on ``occurred_at`` (naive values are UTC).
    ecg_id:
        Events about one ECG.
    """

    patient_id: str | None = None
    user: str | None = None
    event: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    ecg_id: int | None = None

    def describe(self) -> str:
        """The filters as a compact ``key=value`` string (what the audit event records as its query)."""
        parts = []
        for name in ("patient_id", "user", "event", "since", "until", "ecg_id"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value.isoformat() if isinstance(value, dt.datetime) else value}")
        return "&".join(parts)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def query_events(
    session: Session, filters: AuditQuery, *, limit: int = 1000, before_id: int | None = None
) -> list[AuditEvent]:
    """Audit events matching ``filters``, newest first.

    Parameters
    ----------
    session:
        An open session.
    filters:
        See :class:`AuditQuery`.
    limit:
        At most this many events.
    before_id:
        Only events with a smaller id (the cursor of the next page).

    Returns
    -------
    list[AuditEvent]
        Newest first.
    """
    stmt = select(AuditEvent)
    if filters.patient_id is not None:
        stmt = stmt.where(AuditEvent.patient_id == filters.patient_id)
    if filters.user is not None:
        stmt = stmt.where(AuditEvent.user == filters.user)
    if filters.event is not None:
        if filters.event.isdigit():
            stmt = stmt.where(AuditEvent.event_id == filters.event)
        else:
            stmt = stmt.where(AuditEvent.event_type == filters.event)
    if filters.since is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= _utc(filters.since))
    if filters.until is not None:
        stmt = stmt.where(AuditEvent.occurred_at < _utc(filters.until))
    if filters.ecg_id is not None:
        stmt = stmt.where(AuditEvent.ecg_id == filters.ecg_id)
    if before_id is not None:
        stmt = stmt.where(AuditEvent.id < before_id)
    return list(session.execute(stmt.order_by(AuditEvent.id.desc()).limit(limit)).scalars())


def event_as_dict(event: AuditEvent) -> dict[str, Any]:
    """An event as a JSON-ready dict with the :data:`EXPORT_FIELDS` keys (times in ISO 8601 UTC)."""
    out: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
        value = getattr(event, name)
        if isinstance(value, dt.datetime):
            value = _utc(value).isoformat()
        out[name] = value
    return out


def events_to_csv(events: Iterable[AuditEvent]) -> str:
    """Events as CSV text with a header row (``detail`` as compact JSON)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(EXPORT_FIELDS)
    for event in events:
        row = event_as_dict(event)
        if row["detail"] is not None:
            row["detail"] = json.dumps(row["detail"], sort_keys=True, separators=(",", ":"))
        writer.writerow(["" if row[k] is None else row[k] for k in EXPORT_FIELDS])
    return buf.getvalue()
