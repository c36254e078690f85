"""Operator actions shared by the API and the CLI: resend a delivery, rescore an ECG, fetch a report PDF.

Each action is audited with who asked (user, role, client address).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ecgcad.db import audit
from ecgcad.db.models import Delivery, EcgRecord, Result
from ecgcad.errors import QueueError

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)


def resend_delivery(
    ctx: AppContext, delivery_id: int, *, user: str, role: str | None = None, address: str | None = None
) -> dict[str, Any]:
    """Queue one more delivery of the same object (same SOP Instance UID; a new MSH-10 for an ORU).

    Raises
    ------
    LookupError
        No such delivery.
    """
    with ctx.db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise LookupError(f"no delivery {delivery_id}")
        result = session.get(Result, delivery.result_id)
        ecg = session.get(EcgRecord, result.ecg_id) if result else None
        delivery.state = "pending"
        delivery.next_attempt_at = None
        previous_sent = delivery.sent_at is not None
        dest_attempts = 10
        try:
            dest_attempts = ctx.settings.destination(delivery.destination).max_attempts
        except Exception:  # noqa: BLE001 - a removed destination fails in the job with a clear response
            pass
        job_id = ctx.queue.defer(
            session,
            "deliver",
            {"delivery_id": delivery.id},
            dedupe_key=f"deliver:{delivery.id}:resend:{delivery.attempts}:{_now_token()}",
            max_attempts=dest_attempts,
        )
        audit.record(
            session,
            "delivery.resend",
            user=user,
            role=role,
            address=address,
            patient_id=ecg.patient_id if ecg else None,
            issuer_of_patient_id=ecg.issuer_of_patient_id if ecg else None,
            study_instance_uid=ecg.study_instance_uid if ecg else None,
            ecg_id=ecg.id if ecg else None,
            detail={
                "delivery_id": delivery.id,
                "destination": delivery.destination,
                "kind": delivery.object_kind,
                "was_sent": previous_sent,
            },
        )
        out = {"delivery_id": delivery.id, "job_id": job_id, "state": delivery.state}
    _wake(ctx)
    return out


def rescore_ecg(
    ctx: AppContext, ecg_id: int, *, user: str, role: str | None = None, address: str | None = None
) -> dict[str, Any]:
    """Queue a rescore: a new result version, delivered as a correction.

    Raises
    ------
    LookupError
        No such ECG.
    """
    from ecgcad.pipeline.scoring import next_result_version

    with ctx.db.session() as session:
        ecg = session.get(EcgRecord, ecg_id)
        if ecg is None:
            raise LookupError(f"no ECG {ecg_id}")
        target = next_result_version(session, ecg_id)
        job_id = ctx.queue.defer(
            session,
            "rescore",
            {"ecg_id": ecg_id, "requested_by": user, "target_version": target},
            dedupe_key=f"rescore:{ecg_id}:{target}",
        )
        audit.record(
            session,
            "api.action" if role else "cli.action",
            user=user,
            role=role,
            address=address,
            patient_id=ecg.patient_id,
            issuer_of_patient_id=ecg.issuer_of_patient_id,
            study_instance_uid=ecg.study_instance_uid,
            ecg_id=ecg.id,
            detail={"action": "rescore", "target_version": target},
        )
    _wake(ctx)
    if job_id is None:
        raise QueueError(f"a rescore of ECG {ecg_id} to version {target} is already queued")
    return {"ecg_id": ecg_id, "job_id": job_id, "result_version": target}


def report_pdf(ctx: AppContext, ecg_id: int) -> bytes:
    """The PDF report of the ECG's current (newest, non-shadow) result.

    Raises
    ------
    LookupError
        No such ECG, or it has no result yet.
    """
    from ecgcad.pipeline.reports import report_pdf_for_result, report_read_session

    # A read session: building the PDF (explanations included) can take seconds, and must not hold the
    # write lock that every C-STORE and HL7 message of the service waits for.
    with report_read_session(ctx) as session:
        result = (
            session.execute(
                select(Result)
                .where(Result.ecg_id == ecg_id, Result.shadow.is_(False))
                .order_by(Result.result_version.desc(), Result.id.desc())
            )
            .scalars()
            .first()
        )
        if result is None:
            raise LookupError(f"ECG {ecg_id} has no result")
        pdf = report_pdf_for_result(ctx, session, result)
    return pdf


def _now_token() -> str:
    import time

    return str(time.time_ns())


def _wake(ctx: AppContext) -> None:
    worker = ctx.components.get("worker")
    if worker is not None:
        worker.wake()
