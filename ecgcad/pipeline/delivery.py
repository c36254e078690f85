"""Delivery jobs: build the SR / PDF / ORU of a result and send it until the destination confirms.

``deliver`` jobs (payload ``{"delivery_id"}``) make one attempt each. Delivered → the Delivery row is
``sent`` (with the peer's answer) and audited. Not delivered and retryable → the row is ``retrying`` and the
job is retried by the queue with exponential backoff and jitter. Refused for good, or out of attempts → the
row is ``failed`` (the dead letter) with the last response. A row already ``sent`` is never sent again,
so a duplicate job or a duplicate acknowledgement does not deliver twice. Each destination and each result
has its own jobs: one failing destination never blocks another. Each attempt borrows its sender from the
context's :class:`SenderPool`, so an association or MLLP connection kept open (``keep_open_s``) carries the
next object to the same destination.

``rescore`` jobs (payload ``{"ecg_id", "requested_by"}``) score an ECG again as a new result version; its
deliveries go out as corrections (ORU ``C``, SR with PredecessorDocumentsSequence).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import Dataset
from sqlalchemy import select

from ecgcad.config import DestinationSettings
from ecgcad.db import audit
from ecgcad.db.models import Delivery, EcgRecord, Result, utcnow
from ecgcad.errors import BuildError, DeliveryError, EcgcadError, PermanentDeliveryError
from ecgcad.integration.transport.dicom import DicomStoreSender
from ecgcad.integration.transport.mllp import MllpSender
from ecgcad.integration.transport.senders import Sender, SendOutcome
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.jobs.worker import Handler
from ecgcad.logsetup import uid_hash
from ecgcad.pipeline.reports import build_report_input, report_read_session

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

#: How ``Delivery.last_response`` starts when the object could not be built: a *content* error (our report
#: of this result cannot be made), never cured by a retry. Counted apart from refusals and outages
#: (``ecgcad_delivery_content_errors`` on ``/metrics``, "content errors" on the dashboard) as an alert.
CONTENT_ERROR_PREFIX = "could not build "


def build_sender(
    dest: DestinationSettings, *, calling_ae: str, spool_dir: Path | None = None
) -> DicomStoreSender | MllpSender:
    """A new sender for ``dest``, keeping its connection open for ``dest.keep_open_s``; a DICOM sender
    stages encoded objects in ``spool_dir`` while it sends them."""
    if dest.kind == "dicom":
        return DicomStoreSender(
            dest.host,
            dest.port,
            dest.ae_title,
            calling_ae=calling_ae,
            timeout=dest.timeout_s,
            keep_open_s=dest.keep_open_s,
            spool_dir=spool_dir,
        )
    return MllpSender(dest.host, dest.port, timeout=dest.timeout_s, keep_open_s=dest.keep_open_s)


def _close_sender(sender: Sender) -> None:
    close = getattr(sender, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing is best effort
            logger.warning("closing %r failed", sender, exc_info=True)


class SenderPool:
    """Senders kept per destination, lent to one delivery attempt at a time, so that their open
    association / TCP connection carries the next object.

    :meth:`checkout` lends an idle sender of the destination (the most recently returned one with an open
    connection, so that the others idle out) or builds a new one; it comes back when the attempt is done.
    A sender serves one thread at a time; several delivery threads may each hold one of the same
    destination, each with its own connection. A sender returned while another sender of its destination
    is still setting up a connection closes its own: a peer that serves one association or connection at
    a time (dcmtk ``storescp`` without ``--fork``, many interface engines) would otherwise hold the other
    off for as long as ours stays open. A destination whose settings changed gets new senders (the old
    ones are closed). :meth:`close` closes every idle sender, and a sender returned afterwards is closed
    instead of kept. Connections close by themselves once idle for the destination's ``keep_open_s``.
    """

    def __init__(self, spool_dir: Path | None = None) -> None:
        self.spool_dir = spool_dir
        self._lock = threading.Lock()
        self._idle: dict[str, tuple[tuple[Any, ...], list[Sender]]] = {}
        self._lent: dict[str, list[Sender]] = {}
        self._closed = False

    @staticmethod
    def _key(dest: DestinationSettings, calling_ae: str) -> tuple[Any, ...]:
        return (
            dest.kind,
            dest.host,
            dest.port,
            dest.ae_title,
            dest.timeout_s,
            dest.keep_open_s,
            calling_ae,
        )

    @contextlib.contextmanager
    def checkout(self, dest: DestinationSettings, *, calling_ae: str) -> Iterator[Sender]:
        """Lend a sender for ``dest`` for the duration of the ``with`` block.

        Parameters
        ----------
        dest:
            The destination.
        calling_ae:
            Our AE title (DICOM destinations).

        Yields
        ------
        Sender
            Used by the calling thread only, until the block ends.
        """
        key = self._key(dest, calling_ae)
        sender: Sender | None = None
        stale: list[Sender] = []
        with self._lock:
            entry = self._idle.get(dest.name)
            if entry is not None and entry[0] != key:
                stale = entry[1]
                del self._idle[dest.name]
            elif entry is not None and entry[1]:
                idle = entry[1]
                connected = [i for i, s in enumerate(idle) if getattr(s, "is_open", False)]
                sender = idle.pop(connected[-1] if connected else -1)
        for old in stale:
            _close_sender(old)
        if sender is None:
            sender = build_sender(dest, calling_ae=calling_ae, spool_dir=self.spool_dir)
        with self._lock:
            self._lent.setdefault(dest.name, []).append(sender)
        try:
            yield sender
        finally:
            self._give_back(dest.name, key, sender)

    def _give_back(self, name: str, key: tuple[Any, ...], sender: Sender) -> None:
        with self._lock:
            lent = self._lent.get(name, [])
            lent.remove(sender)
            contended = any(getattr(other, "connecting", False) for other in lent)
        if contended and getattr(sender, "is_open", False):
            logger.debug("%r: another sender is connecting to the same destination; closing ours", sender)
            _close_sender(sender)
        with self._lock:
            if not self._closed:
                entry = self._idle.setdefault(name, (key, []))
                if entry[0] == key:
                    entry[1].append(sender)
                    return
        _close_sender(sender)  # pool closed, or the destination changed while it was out

    def idle_count(self, name: str) -> int:
        """Senders of destination ``name`` waiting in the pool."""
        with self._lock:
            entry = self._idle.get(name)
            return len(entry[1]) if entry is not None else 0

    def close(self) -> None:
        """Close every idle sender; senders still lent out are closed when they come back."""
        with self._lock:
            self._closed = True
            senders = [sender for _, idle in self._idle.values() for sender in idle]
            self._idle.clear()
        for sender in senders:
            _close_sender(sender)


_POOL_LOCK = threading.Lock()


def sender_pool(ctx: AppContext) -> SenderPool:
    """The context's :class:`SenderPool` (created on first use; ``ctx.close()`` closes it)."""
    pool = ctx.sender_pool
    if pool is None:
        with _POOL_LOCK:
            pool = ctx.sender_pool
            if pool is None:
                pool = ctx.sender_pool = SenderPool(_spool_dir(ctx))
    return pool  # type: ignore[no-any-return]


@contextlib.contextmanager
def checkout_sender(ctx: AppContext, dest: DestinationSettings) -> Iterator[Sender]:
    """The sender for one attempt to ``dest``: lent from the context's pool for the ``with`` block.

    Tests replace it through ``ctx.sender_factory`` (called for every attempt, nothing pooled or closed).
    """
    factory = ctx.sender_factory
    if factory is not None:
        yield factory(dest)
        return
    with sender_pool(ctx).checkout(dest, calling_ae=ctx.settings.dicom.ae_title) as sender:
        yield sender


def make_sender(ctx: AppContext, dest: DestinationSettings) -> Sender:
    """A new sender of its own for ``dest`` (not pooled: the caller closes it); honours ``ctx.sender_factory``.

    Deliveries use :func:`checkout_sender`.
    """
    factory = ctx.sender_factory
    if factory is not None:
        return factory(dest)
    return build_sender(dest, calling_ae=ctx.settings.dicom.ae_title, spool_dir=_spool_dir(ctx))


def _spool_dir(ctx: AppContext) -> Path | None:
    """``<data_dir>/spool`` (mode 0700): objects being sent stay with the rest of the service's data."""
    path = Path(ctx.settings.data_dir) / "spool"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        logger.warning("cannot create the spool folder; encoded objects are staged in the system temp folder")
        return None
    return path


def build_payload(
    ctx: AppContext, session: Session, delivery: Delivery, result: Result, dest: DestinationSettings
) -> tuple[bytes | Dataset, str]:
    """The object to send and its identifier (SOP Instance UID or MSH-10).

    The SR and the Encapsulated PDF are encoded here (DICOM Part 10, Explicit VR Little Endian, by
    :func:`ecgcad.integration.reports.dicom_encode.encode_part10`): the sender sends their data set as it is, and
    the ORU is its ER7 bytes.
    """
    from ecgcad.integration.reports.dicom_encode import encode_part10
    from ecgcad.integration.reports.oru import OruProfile, build_oru, control_id_for
    from ecgcad.integration.reports.pdf import build_encapsulated_pdf, render_report_pdf
    from ecgcad.integration.reports.sr import build_stenosis_sr

    rs = ctx.settings.reports
    with_pdf = delivery.object_kind == "pdf" or (delivery.object_kind == "oru" and rs.oru_include_pdf)
    inp = build_report_input(ctx, session, result, with_signal=with_pdf)
    if delivery.object_kind == "sr":
        ds = build_stenosis_sr(
            inp,
            manufacturer=rs.manufacturer,
            institution_name=rs.institution_name or None,
            sop_class=rs.sr_sop_class,
        )
        return encode_part10(ds), str(ds.SOPInstanceUID)
    if delivery.object_kind == "pdf":
        ds = build_encapsulated_pdf(inp, render_report_pdf(inp), manufacturer=rs.manufacturer)
        return encode_part10(ds), str(ds.SOPInstanceUID)
    if delivery.object_kind == "oru":
        control_id = control_id_for(result.id, result.result_version, delivery.attempts)
        status = "C" if result.result_version > 1 else rs.oru_result_status
        profile = OruProfile(
            include_pv1=rs.oru_include_pv1,
            accession_field=None if rs.oru_accession_field == "none" else rs.oru_accession_field,
            not_evaluated_mode=rs.not_evaluated_mode,
        )
        msg = build_oru(
            inp,
            control_id=control_id,
            result_status=status,  # type: ignore[arg-type]
            sending_application=ctx.settings.hl7.application,
            sending_facility=ctx.settings.hl7.facility,
            receiving_application=dest.ae_title or dest.name.upper(),
            profile=profile,
            include_pdf=render_report_pdf(inp) if rs.oru_include_pdf else None,
        )
        return msg, control_id
    raise BuildError(f"unknown object kind {delivery.object_kind!r}")


def attempt_delivery(ctx: AppContext, delivery_id: int, *, final_attempt: bool) -> SendOutcome | None:
    """Make one attempt; return the outcome (``None`` when there is nothing to send)."""
    from ecgcad.pipeline.telemetry import TELEMETRY

    with ctx.db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.state == "sent":
            return None
        try:
            dest = ctx.settings.destination(delivery.destination)
        except EcgcadError:
            delivery.state = "failed"
            delivery.last_response = f"destination {delivery.destination!r} is no longer configured"
            return SendOutcome.permanent(delivery.last_response)
        delivery.attempts += 1
        delivery.state = "sending"
    # Building (SR, PDF with explanations, ORU) can take seconds: it reads in a session that does not hold
    # the database's write lock, so the listeners keep committing meanwhile.
    try:
        with report_read_session(ctx) as session:
            delivery = session.get(Delivery, delivery_id)
            assert delivery is not None
            result = session.get(Result, delivery.result_id)
            assert result is not None
            payload, object_uid = build_payload(ctx, session, delivery, result, dest)
    except (BuildError, EcgcadError) as exc:
        return _content_error(ctx, delivery_id, dest, exc)
    # The network call happens outside any transaction: the database is never held while a peer is slow.
    with checkout_sender(ctx, dest) as sender:
        outcome = sender.send(payload)
    with ctx.db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        delivery.object_uid = object_uid
        result = session.get(Result, delivery.result_id)
        ecg = session.get(EcgRecord, result.ecg_id) if result is not None else None
        delivery.last_response = outcome.response[:2000]
        now = utcnow()
        if outcome.delivered:
            delivery.state = "sent"
            delivery.sent_at = now
            delivery.next_attempt_at = None
            event = "delivery.sent"
        elif outcome.retryable and not final_attempt:
            delivery.state = "retrying"
            delivery.next_attempt_at = (
                now + dt.timedelta(seconds=ctx.queue.backoff.delay(delivery.attempts))
                if hasattr(ctx.queue, "backoff")
                else None
            )
            event = None
        else:
            delivery.state = "failed"
            event = "delivery.failed"
        if event:
            audit.record(
                session,
                event,
                outcome=0 if outcome.delivered else 8,
                ae_title=dest.ae_title or None,
                address=f"{dest.host}:{dest.port}",
                patient_id=ecg.patient_id if ecg else None,
                issuer_of_patient_id=ecg.issuer_of_patient_id if ecg else None,
                study_instance_uid=ecg.study_instance_uid if ecg else None,
                sop_instance_uid=delivery.object_uid if delivery.object_kind != "oru" else None,
                ecg_id=ecg.id if ecg else None,
                detail={
                    "delivery_id": delivery.id,
                    "destination": dest.name,
                    "kind": delivery.object_kind,
                    "response": outcome.response[:500],
                },
            )
    TELEMETRY.count_delivery(
        dest.name,
        "sent" if outcome.delivered else ("retry" if outcome.retryable and not final_attempt else "failed"),
    )
    logger.info(
        "delivery %s (%s to %s, obj#%s) attempt %s: %s",
        delivery_id,
        delivery.object_kind,
        dest.name,
        uid_hash(delivery.object_uid),
        delivery.attempts,
        "sent" if outcome.delivered else outcome.response,
    )
    return outcome


def _content_error(
    ctx: AppContext, delivery_id: int, dest: DestinationSettings, exc: Exception
) -> SendOutcome:
    """The object of a delivery could not be built: ``failed`` for good, audited, counted and logged as an
    error (an alert: a result that does not reach its destination), not as a quiet refusal."""
    from ecgcad.pipeline.telemetry import TELEMETRY

    with ctx.db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None
        delivery.state = "failed"
        delivery.next_attempt_at = None
        delivery.last_response = f"{CONTENT_ERROR_PREFIX}{delivery.object_kind}: {exc}"[:2000]
        kind = delivery.object_kind
        result = session.get(Result, delivery.result_id)
        ecg = session.get(EcgRecord, result.ecg_id) if result is not None else None
        audit.record(
            session,
            "delivery.failed",
            outcome=8,
            ae_title=dest.ae_title or None,
            address=f"{dest.host}:{dest.port}",
            patient_id=ecg.patient_id if ecg else None,
            issuer_of_patient_id=ecg.issuer_of_patient_id if ecg else None,
            study_instance_uid=ecg.study_instance_uid if ecg else None,
            ecg_id=ecg.id if ecg else None,
            detail={
                "delivery_id": delivery_id,
                "destination": dest.name,
                "kind": kind,
                "content_error": True,
                "response": delivery.last_response[:500],
            },
        )
        response = delivery.last_response
    TELEMETRY.count_delivery(dest.name, "content_error")
    # The exception's message may quote copied values: only its type goes to the log.
    logger.error(
        "delivery %s (%s to %s): content error, the object could not be built (%s); it needs an operator",
        delivery_id,
        kind,
        dest.name,
        type(exc).__name__,
    )
    return SendOutcome.permanent(response)


def waiting_for_earlier(ctx: AppContext, delivery_id: int) -> bool:
    """For a destination with ``ordered_per_patient``: True (and the delivery re-queued shortly) while an
    earlier delivery of the same patient to the same destination is still on its way."""
    with ctx.db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.state == "sent":
            return False
        try:
            dest = ctx.settings.destination(delivery.destination)
        except EcgcadError:
            return False
        if not dest.ordered_per_patient:
            return False
        ecg = session.execute(
            select(EcgRecord)
            .join(Result, Result.ecg_id == EcgRecord.id)
            .where(Result.id == delivery.result_id)
        ).scalar_one()
        if not ecg.patient_id:
            return False
        earlier = session.execute(
            select(Delivery.id)
            .join(Result, Result.id == Delivery.result_id)
            .join(EcgRecord, EcgRecord.id == Result.ecg_id)
            .where(
                Delivery.destination == delivery.destination,
                Delivery.object_kind == delivery.object_kind,
                Delivery.id < delivery.id,
                Delivery.state.notin_(("sent", "failed")),
                EcgRecord.patient_id == ecg.patient_id,
                EcgRecord.issuer_of_patient_id.is_(None)
                if ecg.issuer_of_patient_id is None
                else EcgRecord.issuer_of_patient_id == ecg.issuer_of_patient_id,
            )
            .limit(1)
        ).first()
        if earlier is None:
            return False
        delivery.state = "waiting"
        delivery.last_response = f"waiting for delivery {earlier[0]} of the same patient"
        import time as _time

        ctx.queue.defer(
            session,
            "deliver",
            {"delivery_id": delivery.id},
            dedupe_key=f"deliver:{delivery.id}:wait:{_time.time_ns()}",
            run_after=utcnow() + dt.timedelta(seconds=1),
            max_attempts=dest.max_attempts,
        )
        return True


def make_deliver_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``deliver`` jobs."""

    def handle(jobs: list[ClaimedJob]) -> dict[int, BaseException | None]:
        failures: dict[int, BaseException | None] = {}
        for job in jobs:
            if waiting_for_earlier(ctx, int(job.payload["delivery_id"])):
                continue  # re-queued behind the patient's earlier delivery; this job is done
            outcome = attempt_delivery(
                ctx, int(job.payload["delivery_id"]), final_attempt=job.attempts >= job.max_attempts
            )
            if outcome is None or outcome.delivered:
                continue
            failures[job.id] = (
                DeliveryError(outcome.response)
                if outcome.retryable
                else PermanentDeliveryError(outcome.response)
            )
        return failures

    return handle


__all__ = [
    "SenderPool",
    "attempt_delivery",
    "build_payload",
    "build_sender",
    "checkout_sender",
    "make_deliver_handler",
    "make_sender",
    "sender_pool",
]
