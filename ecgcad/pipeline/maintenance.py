"""Scheduled housekeeping jobs: ``retention`` (raw objects past their retention) and ``maintenance`` (database).

Both run in a worker; the scheduler only enqueues them (one per night, period-stamped dedupe key).

Retention deletes the raw bytes of received objects older than ``[retention] <kind>_days`` and marks their
:class:`~ecgcad.db.models.SourceObject` rows ``deleted_at``. It never deletes an object whose work is not
finished: an ECG still received/queued or failed, a result with a delivery that is not ``sent``, or a source
without any ECG or order row yet (its decode or HL7 job has not run). ECG rows, results, deliveries and the
audit trail are kept (the audit trail has its own, longer retention). The database row is marked first and
the file deleted after the commit: a crash in between leaves an orphan file, never a row pointing at nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, exists, select, text
from sqlalchemy.orm import Session

from ecgcad.db import audit
from ecgcad.db.models import (
    IN_DATABASE,
    Delivery,
    EcgRecord,
    KvState,
    Order,
    Result,
    SourceObject,
    utcnow,
)
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.jobs.worker import Handler

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

RETENTION_KINDS = ("dicom", "hl7", "file", "pacs")
#: ECG states whose work is finished (anything else is queued or failing and is kept).
FINISHED_ECG_STATES = ("scored", "not_evaluated")
#: Vacuum SQLite when more than this fraction of its pages is free.
VACUUM_FREE_FRACTION = 0.2


def _deletable(kind: str, cutoff: dt.datetime) -> ColumnElement[bool]:
    """WHERE clause: objects of ``kind`` received before ``cutoff`` whose work is finished and delivered."""
    unfinished_ecg = exists().where(
        EcgRecord.source_object_id == SourceObject.id, EcgRecord.state.not_in(FINISHED_ECG_STATES)
    )
    undelivered = exists().where(
        EcgRecord.source_object_id == SourceObject.id,
        Result.ecg_id == EcgRecord.id,
        Delivery.result_id == Result.id,
        Delivery.state != "sent",
    )
    has_ecg = exists().where(EcgRecord.source_object_id == SourceObject.id)
    has_order = exists().where(Order.source_object_id == SourceObject.id)
    return and_(
        SourceObject.kind == kind,
        SourceObject.deleted_at.is_(None),
        SourceObject.received_at < cutoff,
        has_ecg | has_order,
        ~unfinished_ecg,
        ~undelivered,
    )


def apply_retention(ctx: AppContext, *, now: dt.datetime | None = None) -> dict[str, int]:
    """Delete raw objects past their retention; return how many per kind.

    Parameters
    ----------
    ctx:
        The application context (settings, database, object store).
    now:
        The clock (tests).
    """
    now = now or utcnow()
    settings = ctx.settings.retention
    deleted: dict[str, int] = {}
    for kind in RETENTION_KINDS:
        days = settings.days_for(kind)
        if days <= 0:
            continue
        cutoff = now - dt.timedelta(days=days)
        total = 0
        while True:
            with ctx.db.session() as session:
                rows = (
                    session.execute(
                        select(SourceObject)
                        .where(_deletable(kind, cutoff))
                        .order_by(SourceObject.id)
                        .limit(settings.batch_size)
                    )
                    .scalars()
                    .all()
                )
                if not rows:
                    break
                for obj in rows:
                    obj.deleted_at = now
                    if obj.storage_path == IN_DATABASE:
                        obj.content = None
                digests = [obj.sha256 for obj in rows if obj.storage_path != IN_DATABASE]
                audit.record(
                    session,
                    "retention.deleted",
                    detail={
                        "kind": kind,
                        "days": days,
                        "count": len(rows),
                        "source_object_ids": [o.id for o in rows],
                    },
                )
            for digest in digests:  # after the commit (see the module docstring)
                ctx.store.delete(digest)
            total += len(rows)
        if total:
            logger.info("retention: deleted %d %s objects older than %d days", total, kind, days)
        deleted[kind] = total
    return deleted


def make_retention_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``retention`` jobs."""

    def handle(jobs: list[ClaimedJob]) -> None:
        apply_retention(ctx)
        return None

    return handle


def _set_marker(session: Session, key: str, value: dict[str, Any]) -> None:
    row = session.get(KvState, key)
    if row is None:
        session.add(KvState(key=key, value=value))
    else:
        row.value = value


def run_maintenance(ctx: AppContext, *, vacuum: bool | None = None) -> dict[str, Any]:
    """Database upkeep: SQLite WAL checkpoint, ``ANALYZE`` and (when worth it) ``VACUUM``; PostgreSQL ``ANALYZE``.

    Parameters
    ----------
    ctx:
        The application context.
    vacuum:
        Force (True) or forbid (False) SQLite ``VACUUM``; ``None`` vacuums when more than
        :data:`VACUUM_FREE_FRACTION` of the pages are free.

    Returns
    -------
    dict
        What was done (also stored in ``KvState["maintenance:last"]``).
    """
    report: dict[str, Any] = {"dialect": ctx.db.dialect, "at": utcnow().isoformat()}
    if ctx.db.dialect == "sqlite":
        # VACUUM cannot run inside a transaction: use the driver connection in autocommit.
        raw = ctx.db.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            cur.execute("ANALYZE")
            pages = cur.execute("PRAGMA page_count").fetchone()[0]
            free = cur.execute("PRAGMA freelist_count").fetchone()[0]
            report.update(page_count=pages, freelist_count=free)
            do_vacuum = vacuum if vacuum is not None else bool(pages and free / pages > VACUUM_FREE_FRACTION)
            if do_vacuum:
                cur.execute("VACUUM")
                cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            report["vacuumed"] = do_vacuum
            cur.close()
        finally:
            raw.close()
    else:
        with ctx.db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        report["vacuumed"] = False  # autovacuum's job on PostgreSQL
    with ctx.db.session() as session:
        _set_marker(session, "maintenance:last", report)
    logger.info("database maintenance done: %s", report)
    return report


def make_maintenance_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``maintenance`` jobs (payload may hold ``{"vacuum": true}``)."""

    def handle(jobs: list[ClaimedJob]) -> None:
        vacuum = next((j.payload.get("vacuum") for j in jobs if "vacuum" in j.payload), None)
        run_maintenance(ctx, vacuum=vacuum)
        return None

    return handle
