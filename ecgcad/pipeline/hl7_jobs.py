"""The worker side of HL7 intake: the ``hl7`` job kind (payload ``{"source_object_id": …}``).

The MLLP server stored the raw message and acknowledged it; here it is parsed in full:

* ``ORU^R01`` — decoded to a canonical ECG (:func:`ecgcad.integration.formats.readers.decode`); the ECG row is
  created (or, when decoding fails, a row with ``decode_status = "failed"`` and the reason: the ECG is then
  reported "not evaluated", never dropped), linked to a stored order by placer / filler order number or
  accession number, and its ``score`` job is queued in the same transaction.
* ``ORM^O01``, ``OMG^O19``, ``ADT^*`` — an :class:`~ecgcad.db.models.Order` row with the identifiers a later
  ECG result can quote.
* anything else that was accepted (``hl7.accept_other_types``) — nothing to do.

Running a job twice for the same source object changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ecgcad.db.models import EcgRecord, Order, SourceObject
from ecgcad.db.objects import source_bytes
from ecgcad.errors import DecodeError, QueueError
from ecgcad.integration.transport.hl7_ack import Hl7HeaderError, OrderInfo, parse_header, parse_order
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.logsetup import uid_hash
from ecgcad.pipeline.ingest import ecg_row_from

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

ORDER_MESSAGE_CODES = frozenset({"ORM", "OMG", "ADT"})

Decoder = Callable[..., Any]


class NotRetryable(QueueError):
    """The job cannot succeed by running again."""

    retryable = False


def _default_decoder() -> Decoder:
    from ecgcad.integration.formats.readers import decode

    return decode


def make_hl7_handler(
    ctx: AppContext, *, decoder: Decoder | None = None
) -> Callable[[list[ClaimedJob]], Mapping[int, BaseException] | None]:
    """A worker handler for ``hl7`` jobs.

    Parameters
    ----------
    ctx:
        Database, object store and queue.
    decoder:
        ``decode(data, *, filename=None) -> Ecg``; default :func:`ecgcad.integration.formats.readers.decode`.

    Returns
    -------
    callable
        ``handler(jobs) -> {job id: exception} | None`` for :meth:`ecgcad.jobs.worker.Worker.register`.
    """
    decode = decoder or _default_decoder()

    def handle(jobs: list[ClaimedJob]) -> Mapping[int, BaseException] | None:
        failures: dict[int, BaseException] = {}
        for job in jobs:
            try:
                process_hl7_message(ctx, int(job.payload["source_object_id"]), decode)
            except Exception as exc:  # noqa: BLE001 - reported to the worker per job
                logger.warning("hl7 job %s failed: %s", job.id, type(exc).__name__)
                failures[job.id] = exc
        return failures or None

    return handle


def process_hl7_message(ctx: AppContext, source_object_id: int, decode: Decoder) -> int | None:
    """Parse one stored HL7 message; return the ECG or order row id created (or already there).

    Raises
    ------
    NotRetryable
        The source object does not exist or is not an HL7 message with a header.
    StorageError
        The object store or database failed (the job is retried).
    """
    with ctx.db.session() as session:
        obj = session.get(SourceObject, source_object_id)
        if obj is None:
            raise NotRetryable(f"source object {source_object_id} does not exist")
        data = source_bytes(ctx.store, obj)
    try:
        header = parse_header(data)
    except Hl7HeaderError as exc:
        raise NotRetryable(f"stored message has no usable header: {exc}") from exc
    code = header.message_code
    try:
        info = parse_order(data)
    except Hl7HeaderError:  # pragma: no cover - parse_header succeeded above
        info = OrderInfo()
    if code == "ORU":
        return _oru(ctx, source_object_id, data, info, decode)
    if code in ORDER_MESSAGE_CODES:
        return _order(ctx, source_object_id, header.type_code, info)
    logger.info("hl7 %s msh10#%s: nothing to do", header.type_code, uid_hash(header.message_control_id))
    return None


def _oru(ctx: AppContext, source_object_id: int, data: bytes, info: OrderInfo, decode: Decoder) -> int:
    ecg = None
    reason: str | None = None
    try:
        ecg = decode(data)
    except DecodeError as exc:
        reason = str(exc)[:500] or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - a reader bug makes the ECG "not evaluated", never lost
        logger.exception("reader failed on hl7 source object %s", source_object_id)
        reason = f"reader error: {type(exc).__name__}"
    with ctx.db.session() as session:
        existing = session.execute(
            select(EcgRecord.id).where(EcgRecord.source_object_id == source_object_id).order_by(EcgRecord.id)
        ).scalar()
        if existing is not None:
            # a re-run after a crash between commit and completion: make sure the score job exists
            ctx.queue.defer(session, "score", {"ecg_id": existing}, dedupe_key=f"score:ecg:{existing}")
            return int(existing)
        row = ecg_row_from(ecg, source_object_id)
        if ecg is None:
            row.decode_status = "failed"
            row.decode_reason = reason or "not decodable"
        # fill what the reader did not find from the message's own order/patient fields (copied verbatim)
        for name in (
            "placer_order_number",
            "filler_order_number",
            "accession_number",
            "patient_id",
            "issuer_of_patient_id",
        ):
            if getattr(row, name, None) is None and getattr(info, name) is not None:
                value = getattr(info, name)
                length = getattr(EcgRecord.__table__.c[name].type, "length", None)
                setattr(row, name, value[:length] if length else value)
        order = find_order(session, row.placer_order_number, row.filler_order_number, row.accession_number)
        if order is not None:
            row.order_id = order.id
        session.add(row)
        session.flush()
        ctx.queue.defer(session, "score", {"ecg_id": row.id}, dedupe_key=f"score:ecg:{row.id}")
        ecg_id = int(row.id)
    logger.info(
        "hl7 ORU source %s → ecg %s (%s)",
        source_object_id,
        ecg_id,
        "decoded" if ecg is not None else "failed",
    )
    _notify(ctx)
    return ecg_id


def _order(ctx: AppContext, source_object_id: int, message_type: str, info: OrderInfo) -> int:
    with ctx.db.session() as session:
        existing = session.execute(
            select(Order.id).where(Order.source_object_id == source_object_id)
        ).scalar()
        if existing is not None:
            return int(existing)
        order = Order(
            source_object_id=source_object_id,
            message_type=message_type[:32],
            order_control=(info.order_control or None) and info.order_control[:8],
            placer_order_number=info.placer_order_number,
            filler_order_number=info.filler_order_number,
            accession_number=info.accession_number and info.accession_number[:64],
            patient_id=info.patient_id and info.patient_id[:64],
            issuer_of_patient_id=info.issuer_of_patient_id and info.issuer_of_patient_id[:64],
            visit_number=info.visit_number and info.visit_number[:64],
            detail={
                "universal_service_id": info.universal_service_id,
                "patient_class": info.patient_class,
                "control_id_hash": uid_hash(info.message_control_id),
            },
        )
        session.add(order)
        session.flush()
        order_id = int(order.id)
    logger.info("hl7 %s source %s → order %s", message_type, source_object_id, order_id)
    return order_id


def find_order(
    session: Session,
    placer_order_number: str | None,
    filler_order_number: str | None,
    accession_number: str | None,
) -> Order | None:
    """The most recent stored order matching any of the given numbers (placer, then filler, then accession)."""
    conditions = []
    if placer_order_number:
        conditions.append(Order.placer_order_number == placer_order_number)
    if filler_order_number:
        conditions.append(Order.filler_order_number == filler_order_number)
    if accession_number:
        conditions.append(Order.accession_number == accession_number)
    if not conditions:
        return None
    candidates = list(
        session.execute(select(Order).where(or_(*conditions)).order_by(Order.id.desc())).scalars()
    )
    for attr, value in (
        ("placer_order_number", placer_order_number),
        ("filler_order_number", filler_order_number),
        ("accession_number", accession_number),
    ):
        if value:
            for order in candidates:
                if getattr(order, attr) == value:
                    return order
    return None


def _notify(ctx: AppContext) -> None:
    worker = ctx.components.get("worker")
    if worker is not None and hasattr(worker, "wake"):
        try:
            worker.wake()
        except Exception:  # noqa: BLE001 - waking is best effort
            logger.debug("worker wake failed", exc_info=True)


__all__ = ["NotRetryable", "find_order", "make_hl7_handler", "process_hl7_message"]
