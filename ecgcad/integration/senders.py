"""Outbound senders: DICOM C-STORE SCU (pynetdicom) and HL7 MLLP client, behind one :class:`Sender` protocol.

A sender makes **one attempt** and reports what the peer said as a :class:`SendOutcome`; it does not
retry, sleep or touch the database (the delivery state machine in ``ecgcad.jobs`` does). Peer behaviour
is never raised: ``send`` returns an outcome. Callers that prefer exceptions call
:meth:`SendOutcome.raise_for_outcome`, which raises :class:`~ecgcad.errors.DeliveryError` (retry) or
:class:`~ecgcad.errors.PermanentDeliveryError` (do not resend).

Classification
--------------
DICOM (:class:`DicomStoreSender`):
    ``0x0000`` → delivered. Warning statuses (``0x0001``, ``0xB000``, ``0xB006``, ``0xB007``, ``0x0107``,
    ``0x0116``) are logged and **not** delivered unless ``accept_warnings=True`` (success only on
    ``0x0000``); they are not retryable (the same object would get the same warning).
    Failures: ``0xA7xx`` out of resources, ``0x0110`` processing failure, ``0x0213`` resource limitation,
    ``0xFE00`` cancelled and unknown codes → retryable; ``0xA9xx``, ``0xCxxx`` (cannot understand / data
    set does not match), ``0x0122`` SOP class not supported, ``0x0124`` not authorised, ``0x0117``
    invalid instance, other ``0x01xx``/``0x02xx`` → permanent. Connection refused, association
    rejected or aborted, no response (DIMSE timeout) → retryable. The peer accepting no presentation
    context for the SOP class → permanent (a configuration problem).
HL7 (:class:`MllpSender`):
    MSA-1 ``AA``/``CA`` → delivered; ``AE``/``CE`` → retryable; ``AR``/``CR`` → permanent; no reply
    within the timeout, connection refused/reset, an unparsable reply or an MSA-2 that does not echo
    MSH-10 → retryable.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import socket
import time
from typing import Protocol, runtime_checkable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ecgcad.errors import BuildError, DeliveryError, PermanentDeliveryError
from ecgcad.logsetup import uid_hash

logger = logging.getLogger(__name__)

#: MLLP start block, end block and carriage return.
MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"

_DICOM_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007, 0x0107, 0x0116})
_DICOM_RETRYABLE = frozenset({0x0110, 0x0213, 0xFE00})


@dataclasses.dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one delivery attempt achieved.

    Attributes
    ----------
    delivered:
        The peer confirmed (C-STORE ``0x0000``; MSA-1 ``AA``/``CA``).
    retryable:
        Not delivered, and a later attempt may succeed (meaningless when delivered).
    response:
        A short, PHI-free description of the peer's answer (``"status 0xA700"``, ``"MSA AE: ..."``,
        ``"connection refused"``), stored as the delivery's last response.
    status:
        The DIMSE status or the MSA-1 code, when the peer answered.
    """

    delivered: bool
    retryable: bool
    response: str
    status: int | str | None = None

    @classmethod
    def ok(cls, response: str, status: int | str | None = None) -> SendOutcome:
        """A delivered outcome."""
        return cls(True, False, response, status)

    @classmethod
    def retry(cls, response: str, status: int | str | None = None) -> SendOutcome:
        """A failed attempt worth retrying."""
        return cls(False, True, response, status)

    @classmethod
    def permanent(cls, response: str, status: int | str | None = None) -> SendOutcome:
        """A refusal that must not be resent."""
        return cls(False, False, response, status)

    def raise_for_outcome(self) -> None:
        """Raise unless delivered.

        Raises
        ------
        DeliveryError
            Not delivered, retryable.
        PermanentDeliveryError
            Not delivered, not retryable.
        """
        if self.delivered:
            return
        if self.retryable:
            raise DeliveryError(self.response)
        raise PermanentDeliveryError(self.response)


@runtime_checkable
class Sender(Protocol):
    """Something that delivers one payload to one destination, once."""

    def send(self, payload: bytes | Dataset) -> SendOutcome:
        """Make one delivery attempt of ``payload`` and report the outcome (never raises for the peer)."""
        ...


# -- DICOM ----------------------------------------------------------------------------------------------


class DicomStoreSender:
    """C-STORE SCU to one DICOM destination (pynetdicom); one association per :meth:`send`.

    Parameters
    ----------
    host, port:
        The Storage SCP.
    called_ae:
        The destination's AE title.
    calling_ae:
        Our AE title.
    timeout:
        Seconds for connection, association negotiation and the C-STORE response.
    accept_warnings:
        Treat C-STORE warning statuses as delivered (default False: success only on ``0x0000``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str = "ECGCAD",
        timeout: float = 30.0,
        *,
        accept_warnings: bool = False,
    ) -> None:
        for name, ae in (("called_ae", called_ae), ("calling_ae", calling_ae)):
            if not isinstance(ae, str) or not 1 <= len(ae.strip()) <= 16 or "\\" in ae:
                raise ValueError(f"{name} must be 1–16 characters without backslash")
        if not 1 <= int(port) <= 65535:
            raise ValueError("port must be in 1..65535")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.host = host
        self.port = int(port)
        self.called_ae = called_ae.strip()
        self.calling_ae = calling_ae.strip()
        self.timeout = float(timeout)
        self.accept_warnings = accept_warnings

    def __repr__(self) -> str:
        return f"DicomStoreSender({self.host!r}, {self.port}, called_ae={self.called_ae!r})"

    def send(self, payload: bytes | Dataset) -> SendOutcome:
        """C-STORE ``payload`` (a dataset or DICOM Part 10 bytes).

        Parameters
        ----------
        payload:
            The object to store.

        Returns
        -------
        SendOutcome
            See the module docstring for the classification.

        Raises
        ------
        BuildError
            ``payload`` is not a readable DICOM object (our bug, not the peer's).
        """
        from pynetdicom import AE

        ds = _as_dataset(payload)
        sop_hash = uid_hash(str(ds.SOPInstanceUID))
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        transfer = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        if getattr(ds, "file_meta", None) is not None and ds.file_meta.get("TransferSyntaxUID") not in (
            None,
            *transfer,
        ):
            transfer.insert(0, ds.file_meta.TransferSyntaxUID)
        ae.add_requested_context(ds.SOPClassUID, transfer)
        started = time.monotonic()
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        except OSError as exc:  # pragma: no cover - pynetdicom normally reports via the assoc state
            return self._log(SendOutcome.retry(f"connection failed: {type(exc).__name__}"), sop_hash)
        if assoc.is_rejected:
            return self._log(SendOutcome.retry("association rejected"), sop_hash)
        if not assoc.is_established:
            return self._log(
                SendOutcome.retry("association not established (refused, aborted or timed out)"), sop_hash
            )
        try:
            try:
                status = assoc.send_c_store(ds)
            except ValueError as exc:
                # No accepted presentation context for this SOP class / transfer syntax.
                return self._log(SendOutcome.permanent(f"not accepted by peer: {exc}"), sop_hash)
            except (RuntimeError, OSError) as exc:
                return self._log(SendOutcome.retry(f"association failed: {type(exc).__name__}"), sop_hash)
        finally:
            if assoc.is_established:
                assoc.release()
        if not status or "Status" not in status:
            return self._log(
                SendOutcome.retry("no C-STORE response (timeout or aborted association)"), sop_hash
            )
        outcome = self.classify(int(status.Status), comment=str(status.get("ErrorComment", "")))
        logger.debug("C-STORE sop=%s took %.3f s", sop_hash, time.monotonic() - started)
        return self._log(outcome, sop_hash)

    def classify(self, status: int, *, comment: str = "") -> SendOutcome:
        """Classify a C-STORE response status (see the module docstring)."""
        text = f"status 0x{status:04X}" + (f" ({comment[:64]})" if comment else "")
        if status == 0x0000:
            return SendOutcome.ok(text, status)
        if status in _DICOM_WARNINGS:
            if self.accept_warnings:
                return SendOutcome.ok("warning " + text, status)
            return SendOutcome.permanent("warning " + text, status)
        if 0xA700 <= status <= 0xA7FF or status in _DICOM_RETRYABLE:
            return SendOutcome.retry(text, status)
        if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or 0x0100 <= status <= 0x02FF:
            return SendOutcome.permanent(text, status)
        return SendOutcome.retry("unknown " + text, status)

    def _log(self, outcome: SendOutcome, sop_hash: str) -> SendOutcome:
        level = logging.INFO if outcome.delivered and outcome.status == 0 else logging.WARNING
        logger.log(
            level,
            "C-STORE sop=%s to %s:%d %s: delivered=%s retryable=%s %s",
            sop_hash,
            self.host,
            self.port,
            self.called_ae,
            outcome.delivered,
            outcome.retryable,
            outcome.response,
        )
        return outcome


def _as_dataset(payload: bytes | Dataset) -> Dataset:
    if isinstance(payload, Dataset):
        ds = payload
    elif isinstance(payload, bytes | bytearray):
        try:
            ds = pydicom.dcmread(io.BytesIO(bytes(payload)))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
            raise BuildError(f"payload is not a DICOM object: {exc}") from exc
    else:
        raise BuildError(f"payload must be a Dataset or bytes, not {type(payload).__name__}")
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise BuildError("payload lacks SOP Class / SOP Instance UID")
    return ds


# -- MLLP -----------------------------------------------------------------------------------------------


def mllp_frame(message: bytes) -> bytes:
    """Wrap an HL7 message in an MLLP block: ``0x0B`` + message + ``0x1C 0x0D``."""
    if MLLP_START in message or b"\x1c" in message:
        raise BuildError("message contains MLLP framing characters")
    return MLLP_START + message + MLLP_END


def mllp_read_frame(sock: socket.socket, *, deadline: float, max_bytes: int = 16 * 1024 * 1024) -> bytes:
    """Read one MLLP block from ``sock`` and return the message inside it.

    Bytes before the start block are ignored; reading stops at the first ``0x1C 0x0D``.

    Raises
    ------
    TimeoutError
        ``deadline`` (a :func:`time.monotonic` value) passed first.
    ConnectionError
        The peer closed the connection before the end block.
    ValueError
        The block exceeds ``max_bytes``.
    """
    buf = bytearray()
    while True:
        end = buf.find(MLLP_END)
        if end >= 0:
            start = buf.find(MLLP_START)
            return bytes(buf[start + 1 if 0 <= start < end else 0 : end])
        if len(buf) > max_bytes:
            raise ValueError("MLLP block too large")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no MLLP end block before the deadline")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)  # socket.timeout is TimeoutError
        if not chunk:
            raise ConnectionError("peer closed the connection before the end block")
        buf += chunk


def parse_ack(message: bytes) -> tuple[str, str, str]:
    """``(MSA-1, MSA-2, ERR/MSA-3 text)`` of an HL7 acknowledgement.

    Raises
    ------
    ValueError
        No MSH or MSA segment.
    """
    text = message.decode("utf-8", "replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise ValueError("acknowledgement does not start with MSH")
    sep = segments[0][3]
    msa = next((s.split(sep) for s in segments if s.startswith("MSA")), None)
    if msa is None:
        raise ValueError("acknowledgement has no MSA segment")
    code = msa[1] if len(msa) > 1 else ""
    control = msa[2] if len(msa) > 2 else ""
    detail = msa[3] if len(msa) > 3 else ""
    err = next((s for s in segments if s.startswith("ERR")), None)
    if err and not detail:
        detail = err[4:]
    return code, control, detail


class MllpSender:
    """HL7 v2 client over MLLP: sends one message per connection and reads its acknowledgement.

    Parameters
    ----------
    host, port:
        The MLLP server.
    timeout:
        Seconds for connecting and, separately, for the whole acknowledgement to arrive.
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        if not 1 <= int(port) <= 65535:
            raise ValueError("port must be in 1..65535")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"MllpSender({self.host!r}, {self.port})"

    def send(self, payload: bytes | Dataset) -> SendOutcome:
        """Send one ER7 message (``\\r``-separated, unframed) and classify the acknowledgement.

        Parameters
        ----------
        payload:
            The HL7 message bytes.

        Returns
        -------
        SendOutcome
            See the module docstring for the classification; ``status`` is MSA-1.

        Raises
        ------
        BuildError
            ``payload`` is not an HL7 message (our bug, not the peer's).
        """
        if not isinstance(payload, bytes | bytearray) or not bytes(payload).startswith(b"MSH"):
            raise BuildError("MLLP payload must be HL7 ER7 bytes starting with MSH")
        message = bytes(payload)
        control_id = _control_id(message)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(mllp_frame(message))
                reply = mllp_read_frame(sock, deadline=time.monotonic() + self.timeout)
        except TimeoutError:
            return self._log(SendOutcome.retry(f"no acknowledgement within {self.timeout:g} s"), control_id)
        except ConnectionRefusedError:
            return self._log(SendOutcome.retry("connection refused"), control_id)
        except (ConnectionError, OSError, ValueError) as exc:
            return self._log(SendOutcome.retry(f"connection failed: {type(exc).__name__}: {exc}"), control_id)
        try:
            code, echoed, detail = parse_ack(reply)
        except ValueError as exc:
            return self._log(SendOutcome.retry(f"unparsable acknowledgement: {exc}"), control_id)
        text = f"MSA {code}" + (f": {detail[:80]}" if detail else "")
        if code in ("AA", "CA"):
            if echoed != control_id:
                return self._log(
                    SendOutcome.retry(f"{text} for another message (MSA-2 does not echo MSH-10)", code),
                    control_id,
                )
            return self._log(SendOutcome.ok(text, code), control_id)
        if code in ("AE", "CE"):
            return self._log(SendOutcome.retry(text, code), control_id)
        if code in ("AR", "CR"):
            return self._log(SendOutcome.permanent(text, code), control_id)
        return self._log(SendOutcome.retry(f"unknown acknowledgement code {code!r}", code), control_id)

    def _log(self, outcome: SendOutcome, control_id: str) -> SendOutcome:
        logger.log(
            logging.INFO if outcome.delivered else logging.WARNING,
            "MLLP msh10=%s to %s:%d: delivered=%s retryable=%s %s",
            control_id,
            self.host,
            self.port,
            outcome.delivered,
            outcome.retryable,
            outcome.response,
        )
        return outcome


def _control_id(message: bytes) -> str:
    first = message.split(b"\r", 1)[0].decode("utf-8", "replace")
    fields = first.split(first[3]) if len(first) > 3 else []
    return fields[9] if len(fields) > 9 else ""
