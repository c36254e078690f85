"""The DICOM C-STORE SCP: receives resting ECGs and acknowledges only what is durably stored.

Each C-STORE is decoded to a canonical :class:`~ecgcad.integration.formats.ecg.Ecg` (a well-formed dataset that fails
decoding is still stored, with its decode failure) and handed to
:meth:`~ecgcad.pipeline.ingest.Ingestor.ingest_dicom`, which writes the bytes (fsync) and commits the source
object, the ECG row, the scoring job and an audit event in one transaction. Only after it returns does the
handler answer ``0x0000``. Errors become DIMSE statuses here and nowhere else:

===========================================  =========================================================
cause                                        status
===========================================  =========================================================
stored (or an identical duplicate)           ``0x0000`` Success
:class:`~ecgcad.errors.StorageError`,        ``0xA700`` Refused: Out of Resources (the sender retries)
:class:`~ecgcad.errors.BackPressureError`
data set over ``dicom.max_object_mb`` or     ``0xA700`` Refused: Out of Resources (not stored)
over the readers' decode limit
dataset that cannot be parsed at all         ``0xC210`` Error: Cannot understand (unable to decode)
anything unexpected                          ``0x0110`` Processing failure (logged with traceback)
===========================================  =========================================================

Only the ECG storage SOP classes and Verification are offered; any other abstract syntax
is refused in association negotiation (and audited). Calling AE titles and peer addresses are checked against
allow-lists; refused associations are audited.

Objects are size-limited while they arrive: once a C-STORE data set passes ``dicom.max_object_mb`` the
association keeps reading its remaining fragments but keeps none of them, and the request is answered
``0xA700`` when it is complete; a PDU longer than we negotiated closes the connection before it is read
(:mod:`ecgcad.listeners.dicom_limits`). An association holds at most the limit plus one PDU of an object,
however large the object. An object over the readers' decode limit is refused the same way, never stored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pydicom import Dataset, dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import ThreadedAssociationServer

from ecgcad.db import audit
from ecgcad.errors import BackPressureError, DecodeError, StorageError
from ecgcad.integration.formats import readers
from ecgcad.integration.formats.ecg import Ecg
from ecgcad.integration.reports.dicom_encode import part10_file
from ecgcad.listeners.allowlist import AddressAllowList
from ecgcad.listeners.dicom_limits import DiscardedDataSet, limit_data_sets, limit_pdu_length
from ecgcad.listeners.tls import server_ssl_context
from ecgcad.logsetup import uid_hash

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE, DimseServiceType
    from pynetdicom.events import Event

    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
TWELVE_LEAD_ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.2"
GENERAL_32BIT_ECG_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.1.4"

#: Storage SOP classes we accept (PS3.4 Annex B waveform storage); ambulatory, hemodynamic and EP waveforms are refused.
ECG_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    TWELVE_LEAD_ECG_WAVEFORM_STORAGE,
    GENERAL_ECG_WAVEFORM_STORAGE,
    GENERAL_32BIT_ECG_WAVEFORM_STORAGE,
)

#: Waveforms are never pixel-compressed: the uncompressed syntaxes plus deflate cover real senders.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110

MIB = 1024 * 1024

Decoder = Callable[..., Any]


def supported_contexts() -> list[PresentationContext]:
    """Our presentation contexts: Verification and the ECG storage classes, each with all our syntaxes."""
    contexts = [build_context(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    contexts += [build_context(uid, list(TRANSFER_SYNTAXES)) for uid in ECG_STORAGE_SOP_CLASSES]
    return contexts


def _default_decoder() -> Decoder:
    from ecgcad.integration.formats.readers import decode

    return decode


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server plus an address allow-list and TCP_NODELAY on accepted sockets."""

    scp: DicomScp

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = self.socket.accept()  # type: ignore[union-attr]
        # Nagle plus the peer's delayed ACK cost ~40 ms per small DIMSE response otherwise.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(sock, server_side=True)
        return sock, address

    def verify_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> bool:
        host = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        if self.scp.address_allow_list.allows(host):
            return True
        logger.warning("refused DICOM connection from %s: address not allowed", host)
        self.scp._audit("dicom.rejected", outcome=4, address=host, detail={"reason": "address not allowed"})
        return False

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        logger.exception("error on DICOM connection from %s", client_address)


class DicomScp:
    """The C-STORE SCP (pynetdicom) of one :class:`~ecgcad.context.AppContext`.

    Parameters
    ----------
    ctx:
        Settings (``ctx.settings.dicom``), database (audit) and the ingestor.
    decoder:
        ``decode(data, *, filename=None) -> Ecg``; default :func:`ecgcad.integration.formats.readers.decode`.
    """

    def __init__(self, ctx: AppContext, *, decoder: Decoder | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.dicom
        self.decoder = decoder or _default_decoder()
        self.address_allow_list = AddressAllowList(self.settings.allowed_addresses)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._ae: AE | None = None
        self.stored = 0
        #: Largest data set accepted, bytes (``dicom.max_object_mb``).
        self.max_object_bytes = self.settings.max_object_mb * MIB
        self._last_pdu: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and start serving in a background thread (returns at once; port 0 picks a free port).

        Raises
        ------
        ConfigurationError
            TLS files or allow-list entries are invalid.
        OSError
            The address cannot be bound.
        """
        if self._server is not None:
            return
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu
        ae.maximum_associations = s.max_associations
        ae.network_timeout = s.network_timeout_s
        ae.acse_timeout = s.network_timeout_s
        ae.dimse_timeout = s.network_timeout_s
        ae.require_calling_aet = list(s.allowed_calling_aets)
        for cx in supported_contexts():
            ae.add_supported_context(str(cx.abstract_syntax), cx.transfer_syntax)
        if not s.allowed_calling_aets:
            logger.warning("DICOM SCP accepts any calling AE title (dicom.allowed_calling_aets is empty)")
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_PDU_RECV, self._on_progress),
        ]
        server = ae.make_server(
            (s.host, s.port),
            ae_title=s.ae_title,
            ssl_context=server_ssl_context(s.tls),
            evt_handlers=handlers,
            server_class=_Server,
        )
        assert isinstance(server, _Server)
        server.scp = self
        ae._servers.append(server)  # so that ae.shutdown() and active_associations see it
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="dicom-scp", daemon=True)
        thread.start()
        self._ae, self._server, self._thread = ae, server, thread
        watchdog = threading.Thread(target=self._watchdog, args=(server,), name="dicom-watchdog", daemon=True)
        watchdog.start()
        host, port = self.address
        logger.info(
            "DICOM SCP %s listening on %s:%s%s", s.ae_title, host, port, " (TLS)" if s.tls.enabled else ""
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, abort open associations and wait for the server thread (bounded)."""
        server, ae, thread = self._server, self._ae, self._thread
        if server is None or ae is None:
            return
        self._server = None
        try:
            server.shutdown()
        except ValueError:
            pass
        deadline = time.monotonic() + timeout_s
        for assoc in list(ae.active_associations):
            assoc.abort()
        # Associations whose peer vanished before negotiating wait out acse_timeout on a dead socket; they
        # are daemon threads holding nothing, so they get a short grace period, not the whole timeout.
        grace = min(deadline, time.monotonic() + 1.0)
        for assoc in list(ae.active_associations):
            assoc.join(max(0.0, grace - time.monotonic()))
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        logger.info("DICOM SCP stopped")

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        if self._server is None:
            raise RuntimeError("DICOM SCP is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def alive(self) -> bool:
        """True while the server thread is serving."""
        return self._server is not None and self._thread is not None and self._thread.is_alive()

    # -- audit -------------------------------------------------------------------------------------------
    def _audit(
        self,
        event_type: str,
        *,
        outcome: int = 0,
        ae_title: str | None = None,
        address: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        try:
            with self.ctx.db.session() as session:
                audit.record(
                    session, event_type, outcome=outcome, ae_title=ae_title, address=address, detail=detail
                )
        except Exception:  # noqa: BLE001 - an audit failure must not break the association
            logger.exception("could not audit %s", event_type)

    # -- slow peers ------------------------------------------------------------------------------------
    def _on_progress(self, event: Event) -> None:
        self._last_pdu[event.assoc] = time.monotonic()
        _set_poll_interval(event.assoc, ACTIVE_POLL_S)

    def _on_connection(self, event: Event) -> None:
        self._on_progress(event)
        _wait_for_dimse_messages(event.assoc)
        limit_data_sets(event.assoc, self.max_object_bytes)
        # A peer may ignore the maximum PDU length we negotiate; one PDU is read whole, so it is capped too.
        max_pdu = self.settings.max_pdu
        limit_pdu_length(event.assoc, max(max_pdu, MIB) if max_pdu else self.max_object_bytes + MIB)

    def _watchdog(self, server: _Server) -> None:
        """Cut connections that send no complete PDU in time (pynetdicom blocks in ``recv`` until a PDU is
        whole, so a peer dripping bytes would otherwise hold an association slot past every timeout)."""
        limit = self.settings.network_timeout_s
        while self._server is server:
            time.sleep(min(0.5, limit / 4))
            ae = self._ae
            if ae is None:
                return
            now = time.monotonic()
            for assoc in list(ae.active_associations):
                last = self._last_pdu.get(assoc)
                if last is not None and now - last > IDLE_AFTER_S:
                    _set_poll_interval(assoc, IDLE_POLL_S)
                # not yet associated: the ACSE timeout; associated: twice the timeout (a store may be slow)
                allowed = limit if not assoc.is_established else 2 * limit
                if last is None or now - last <= allowed:
                    continue
                logger.warning(
                    "cutting DICOM connection from %s: no complete PDU for %.0f s",
                    assoc.requestor.address,
                    now - last,
                )
                self._last_pdu.pop(assoc, None)
                with contextlib.suppress(Exception):
                    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    # -- handlers ----------------------------------------------------------------------------------------
    def _on_established(self, event: Event) -> None:
        assoc = event.assoc
        accepted = sorted({str(cx.abstract_syntax) for cx in assoc.accepted_contexts})
        refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        calling = assoc.requestor.ae_title.strip()[:16]
        # Senders such as storescu propose every storage class; the refusals are normal, so the association
        # event carries their count, and only an association with nothing acceptable is audited as a reject.
        self._audit(
            "dicom.association",
            ae_title=calling,
            address=assoc.requestor.address,
            detail={
                "called_ae": assoc.acceptor.ae_title,
                "accepted": accepted,
                "refused_count": len(refused),
            },
        )
        if refused and not accepted:
            logger.warning("association from %s proposed no acceptable SOP class", calling)
            self._audit(
                "dicom.rejected",
                outcome=4,
                ae_title=calling,
                address=assoc.requestor.address,
                detail={"reason": "abstract syntax not supported", "sop_classes": refused[:20]},
            )

    def _on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        calling = assoc.requestor.ae_title
        allowed = [a.strip() for a in self.settings.allowed_calling_aets]
        reason = (
            "calling AE title not allowed"
            if allowed and calling.strip() not in allowed
            else "association limit reached"
        )
        logger.warning("rejected DICOM association: %s", reason)
        self._audit(
            "dicom.rejected",
            outcome=4,
            ae_title=calling[:16],
            address=assoc.requestor.address,
            detail={"reason": reason},
        )

    def _on_echo(self, event: Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Event) -> int | Dataset:
        try:
            return self._store(event)
        except Exception:  # noqa: BLE001 - the boundary: every exception becomes a DIMSE status
            logger.exception(
                "unexpected error storing uid#%s",
                uid_hash(getattr(event.request, "AffectedSOPInstanceUID", None)),
            )
            return _status(STATUS_PROCESSING_FAILURE, "internal error")

    def _decode(self, data: bytes, sop_instance_uid: str | None) -> tuple[Ecg | None, str | None]:
        """``(ecg, None)``, ``(None, why it could not be decoded)``, or ``(None, None)`` for a dataset that
        cannot be read at all."""
        try:
            return self.decoder(data), None
        except DecodeError as exc:
            if not _readable(data):
                return None, None
            logger.info("stored uid#%s undecoded: %s", uid_hash(sop_instance_uid), type(exc).__name__)
            return None, str(exc)[:500] or type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a reader bug must not lose a well-formed instance
            logger.exception("reader failed on uid#%s; storing it undecoded", uid_hash(sop_instance_uid))
            return None, f"reader error: {type(exc).__name__}"

    def _store(self, event: Event) -> int | Dataset:
        request = cast("C_STORE", event.request)
        sop_class_uid = str(request.AffectedSOPClassUID or "") or None
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "") or None
        assoc = event.assoc
        calling_ae = assoc.requestor.ae_title.strip()[:16]
        peer = assoc.requestor.address
        data_set = cast(io.BytesIO, request.DataSet)
        size = data_set.received if isinstance(data_set, DiscardedDataSet) else data_set.seek(0, io.SEEK_END)
        if size > self.max_object_bytes:
            return self._refuse_too_large(event, sop_instance_uid, size, self.max_object_bytes)
        data = part10_file(
            data_set.getvalue(),
            sop_class_uid=sop_class_uid or "",
            sop_instance_uid=sop_instance_uid or "",
            transfer_syntax_uid=str(event.context.transfer_syntax),
            source_ae=calling_ae,
        )
        if len(data) > readers.MAX_INPUT_BYTES:
            # Never store and acknowledge what the readers refuse to decode for its size.
            return self._refuse_too_large(event, sop_instance_uid, len(data), readers.MAX_INPUT_BYTES)
        ecg, decode_error = self._decode(data, sop_instance_uid)
        if ecg is None and decode_error is None:
            logger.warning("unreadable dataset uid#%s from %s", uid_hash(sop_instance_uid), calling_ae)
            return _status(STATUS_CANNOT_UNDERSTAND, "dataset cannot be parsed")
        try:
            result = self.ctx.ingestor.ingest_dicom(
                data,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                ecg=ecg,
                decode_error=decode_error,
                calling_ae=calling_ae,
                peer_address=peer,
            )
        except BackPressureError as exc:
            logger.warning("back-pressure, refusing uid#%s: %s", uid_hash(sop_instance_uid), exc)
            return _status(STATUS_OUT_OF_RESOURCES, "busy, retry later")
        except StorageError as exc:
            logger.error("storage failed for uid#%s: %s", uid_hash(sop_instance_uid), exc)
            return _status(STATUS_OUT_OF_RESOURCES, "storage unavailable, retry later")
        self.stored += 0 if result.duplicate else 1
        return STATUS_SUCCESS

    def _refuse_too_large(self, event: Event, sop_instance_uid: str | None, size: int, limit: int) -> Dataset:
        assoc = event.assoc
        calling_ae = assoc.requestor.ae_title.strip()[:16]
        logger.warning(
            "refused uid#%s from %s: %d bytes, over %d", uid_hash(sop_instance_uid), calling_ae, size, limit
        )
        self._audit(
            "dicom.rejected",
            outcome=4,
            ae_title=calling_ae,
            address=assoc.requestor.address,
            detail={"reason": "object too large", "bytes": size, "limit": limit},
        )
        return _status(STATUS_OUT_OF_RESOURCES, f"object larger than {limit} bytes")


#: How long the association's reactor waits on its DIMSE queue per turn (see :func:`_wait_for_dimse_messages`).
REACTOR_WAIT_S = 0.005
#: How often an association's transport thread looks for data while PDUs are arriving, and once it has been
#: quiet for :data:`IDLE_AFTER_S` (pynetdicom's own interval; see :func:`_set_poll_interval`).
ACTIVE_POLL_S = 0.0001
IDLE_POLL_S = 0.001
IDLE_AFTER_S = 1.0


def _set_poll_interval(assoc: Association, seconds: float) -> None:
    """Set how long ``assoc``'s transport (DUL) thread sleeps when a turn found nothing to do.

    pynetdicom polls its socket and its send queue, sleeping a millisecond between idle turns: with a
    sender that waits for each response, both the arrival of the next request and the sending of our
    response wait half a millisecond on average. While PDUs arrive the SCP polls every
    :data:`ACTIVE_POLL_S`; the watchdog puts a quiet association back to :data:`IDLE_POLL_S`, so that an
    idle one costs no more CPU than pynetdicom's default.
    """
    dul = getattr(assoc, "dul", None)
    if dul is not None and isinstance(getattr(dul, "_run_loop_delay", None), float):
        dul._run_loop_delay = seconds


def _wait_for_dimse_messages(assoc: Association) -> None:
    """Let ``assoc``'s reactor take a DIMSE message the moment it is complete.

    pynetdicom's association reactor sleeps a millisecond, then looks for a message without waiting; a
    C-STORE that has arrived waits half a millisecond on average before it is handled (a sender such as
    ``storescu`` sends the next instance only after our response), and the loop wakes a thousand times a
    second while idle. Waiting on the queue for up to :data:`REACTOR_WAIT_S` instead takes the message at
    once and wakes less often; release and abort are still noticed within a few milliseconds. Calls that
    ask to block keep pynetdicom's own behaviour. Left alone if this pynetdicom has no such queue.
    """
    dimse = getattr(assoc, "dimse", None)
    msg_queue = getattr(dimse, "msg_queue", None)
    if dimse is None or not isinstance(msg_queue, queue.Queue):
        return
    blocking_get = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[None, None] | tuple[int, DimseServiceType]:
        if block:
            return blocking_get(block=True)
        try:
            return msg_queue.get(timeout=REACTOR_WAIT_S)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _readable(data: bytes) -> bool:
    """True when ``data`` parses as a DICOM dataset (every element) that names its SOP class or instance."""
    try:
        ds = dcmread(io.BytesIO(data), force=True)
        for _elem in ds.iterall():
            pass
        return bool(ds.get("SOPClassUID") or ds.get("SOPInstanceUID"))
    except Exception:  # noqa: BLE001 - any parse failure means "cannot understand"
        return False


__all__ = [
    "ECG_STORAGE_SOP_CLASSES",
    "GENERAL_32BIT_ECG_WAVEFORM_STORAGE",
    "GENERAL_ECG_WAVEFORM_STORAGE",
    "TWELVE_LEAD_ECG_WAVEFORM_STORAGE",
    "VERIFICATION",
    "DicomScp",
    "supported_contexts",
]
