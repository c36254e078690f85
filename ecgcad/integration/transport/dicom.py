"""DICOM C-STORE SCU to one destination (pynetdicom); see :mod:`ecgcad.integration.transport.senders` for the
classification of DIMSE statuses and the kept-open association."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ecgcad.errors import BuildError
from ecgcad.integration.transport.senders import SendOutcome, _KeepOpen
from ecgcad.logsetup import uid_hash

if TYPE_CHECKING:
    from pydicom.tag import BaseTag
    from pynetdicom import AE
    from pynetdicom.association import Association

logger = logging.getLogger(__name__)

_DICOM_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007, 0x0107, 0x0116})
_DICOM_RETRYABLE = frozenset({0x0110, 0x0213, 0xFE00})


#: The SOP classes delivery sends, requested up front on a kept association: Comprehensive SR and
#: Comprehensive 3D SR (``ecgcad.integration.reports.sr``, ``[reports] sr_sop_class``) and Encapsulated PDF
#: Storage (``ecgcad.integration.reports.pdf``). Spelled out here: those modules import highdicom and matplotlib.
STORE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.104.1",
)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class DicomStoreSender(_KeepOpen):
    """C-STORE SCU to one DICOM destination (pynetdicom).

    With ``keep_open_s > 0`` the association stays open between :meth:`send` calls. It is negotiated with
    presentation contexts for ``sop_classes`` (Explicit and Implicit VR Little Endian); an object of
    another SOP class or transfer syntax, or one the peer did not accept on it, gets an association of its
    own, released after its C-STORE (as with ``keep_open_s=0``; the kept one is released first, since
    some peers serve one association at a time). A kept association that the peer
    released or aborted, or whose connection failed before any response arrived, is replaced and the
    object sent again in the same call (a C-STORE of the same SOP Instance UID is idempotent). After a
    DIMSE timeout or an invalid response the association is aborted, never reused. It is released once
    idle for ``keep_open_s`` and on :meth:`close`.

    Part 10 bytes in Explicit VR Little Endian are not decoded: where the peer accepted their SOP class with
    that transfer syntax, their data set goes out as encoded (pynetdicom sends it from a temporary file in a
    private directory, removed when :meth:`send` returns); their SOP Instance UID, logged hashed, is the
    file meta's Media Storage SOP Instance UID.

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
    keep_open_s:
        Seconds an idle association is kept for the next object; 0 (default) opens one per :meth:`send`.
    sop_classes:
        The SOP classes to request on the kept association.
    spool_dir:
        Where an encoded object is staged (in a private folder of its own) while pynetdicom sends it; the
        system's temporary folder when ``None``.

    Attributes
    ----------
    associations:
        Associations established so far (kept and one-off).
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
        keep_open_s: float = 0.0,
        sop_classes: Sequence[str] = STORE_SOP_CLASSES,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        for name, ae in (("called_ae", called_ae), ("calling_ae", calling_ae)):
            if not isinstance(ae, str) or not 1 <= len(ae.strip()) <= 16 or "\\" in ae:
                raise ValueError(f"{name} must be 1–16 characters without backslash")
        if not 1 <= int(port) <= 65535:
            raise ValueError("port must be in 1..65535")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if not keep_open_s >= 0:
            raise ValueError("keep_open_s must be >= 0")
        self.host = host
        self.port = int(port)
        self.called_ae = called_ae.strip()
        self.calling_ae = calling_ae.strip()
        self.timeout = float(timeout)
        self.accept_warnings = accept_warnings
        self.keep_open_s = float(keep_open_s)
        self.sop_classes = tuple(str(uid) for uid in sop_classes)
        self.spool_dir = spool_dir
        self.associations = 0
        self._lock = threading.Lock()
        self._last_used = 0.0
        self._assoc: Any = None
        self._kept_ae: Any = None

    def __repr__(self) -> str:
        return f"DicomStoreSender({self.host!r}, {self.port}, called_ae={self.called_ae!r})"

    def send(self, payload: bytes | Dataset) -> SendOutcome:
        """C-STORE ``payload`` (a dataset or DICOM Part 10 bytes).

        Part 10 bytes in Explicit VR Little Endian (as :func:`ecgcad.integration.reports.dicom_encode.encode_part10`
        makes them) are read only as far as their file meta, and their data set is sent as it is encoded
        wherever the peer accepted the SOP class with Explicit VR Little Endian; otherwise (other bytes, or a
        peer that accepted only Implicit VR) they are decoded and pynetdicom encodes the dataset, as for a
        dataset payload.

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
        obj = _StoreObject.of(payload)
        sop_hash = uid_hash(obj.sop_instance_uid)
        started = time.monotonic()
        try:
            with self._lock:
                if self.keep_open_s > 0 and self._fits_kept(obj):
                    outcome = self._store_kept(obj, sop_hash)
                else:
                    self._drop_connection(graceful=True)  # peers serving one association at a time
                    outcome = self._store_once(obj)
        finally:
            obj.close()
        if outcome.status is not None:
            logger.debug("C-STORE sop=%s took %.3f s", sop_hash, time.monotonic() - started)
        return self._log(outcome, sop_hash)

    def _fits_kept(self, obj: _StoreObject) -> bool:
        return obj.sop_class_uid in self.sop_classes and obj.transfer_syntax in (None, *_UNCOMPRESSED)

    def _new_ae(self, contexts: Sequence[tuple[str, list[str]]], *, network_timeout: float) -> AE:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = network_timeout
        ae.connection_timeout = self.timeout
        for sop_class, transfer in contexts:
            ae.add_requested_context(sop_class, transfer)
        return ae

    def _associate(self, ae: AE) -> tuple[Association | None, SendOutcome | None]:
        """``(association, None)``, or ``(None, outcome)`` when none could be established."""
        self._connecting_since = time.monotonic()
        try:
            assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        except OSError as exc:  # pragma: no cover - pynetdicom normally reports via the assoc state
            return None, SendOutcome.retry(f"connection failed: {type(exc).__name__}")
        finally:
            self._connecting_since = None
        if assoc.is_rejected:
            return None, SendOutcome.retry("association rejected")
        if not assoc.is_established:
            return None, SendOutcome.retry("association not established (refused, aborted or timed out)")
        self.associations += 1
        _no_delay(assoc)
        return assoc, None

    def _store_once(self, obj: _StoreObject) -> SendOutcome:
        """C-STORE on an association of its own, released afterwards."""
        transfer: list[str] = list(_UNCOMPRESSED)
        syntax = obj.transfer_syntax
        if syntax is not None and syntax not in transfer:
            transfer.insert(0, syntax)
        assoc, failure = self._associate(
            self._new_ae([(obj.sop_class_uid, transfer)], network_timeout=self.timeout)
        )
        if failure is not None:
            return failure
        assert assoc is not None  # _associate gives one or the other
        try:
            try:
                status = _c_store(assoc, obj, self.spool_dir)
            except ValueError as exc:
                # No accepted presentation context for this SOP class / transfer syntax.
                return SendOutcome.permanent(f"not accepted by peer: {exc}")
            except (RuntimeError, OSError) as exc:
                return SendOutcome.retry(f"association failed: {type(exc).__name__}")
        finally:
            if assoc.is_established:
                assoc.release()
        return self._status_outcome(status)

    def _store_kept(self, obj: _StoreObject, sop_hash: str) -> SendOutcome:
        """C-STORE on the kept association (opened, or replaced once when found dead)."""
        for attempt in (1, 2):
            assoc = self._assoc
            if assoc is not None and (not assoc.is_established or self._idle_expired()):
                self._drop_connection(graceful=True)
                assoc = None
            reused = assoc is not None
            if assoc is None:
                if self._kept_ae is None:
                    self._kept_ae = self._new_ae(
                        [(sop_class, list(_UNCOMPRESSED)) for sop_class in self.sop_classes],
                        network_timeout=self.timeout + self.keep_open_s,  # our idle close comes first
                    )
                assoc, failure = self._associate(self._kept_ae)
                if failure is not None:
                    return failure
                self._assoc = assoc
            sent_at = time.monotonic()
            try:
                status = _c_store(assoc, obj, self.spool_dir)
            except ValueError:
                # Not accepted on the kept association (raised before anything was sent). Released rather
                # than kept, for peers that serve one association at a time; the next object reopens it.
                self._drop_connection(graceful=True)
                return self._store_once(obj)
            except (RuntimeError, OSError) as exc:
                self._drop_connection(graceful=False)
                if reused and attempt == 1:
                    self._log_reconnect(sop_hash, type(exc).__name__)
                    continue
                return SendOutcome.retry(f"association failed: {type(exc).__name__}")
            if status and "Status" in status:
                self._kept()
                return self._status_outcome(status)
            # No response. pynetdicom aborts by itself (``_sent_abort``) on a DIMSE timeout or an invalid
            # response; otherwise the peer released/aborted or the connection closed before any response.
            peer_ended = not getattr(assoc, "_sent_abort", True) and time.monotonic() - sent_at < self.timeout
            self._drop_connection(graceful=False)
            if reused and attempt == 1 and peer_ended:
                self._log_reconnect(sop_hash, "closed by the peer")
                continue
            return self._status_outcome(status)
        raise AssertionError("unreachable")  # pragma: no cover

    def _log_reconnect(self, sop_hash: str, why: str) -> None:
        logger.info(
            "C-STORE sop=%s: kept association to %s:%d %s is gone (%s); sending on a new one",
            sop_hash,
            self.host,
            self.port,
            self.called_ae,
            why,
        )

    def _has_connection(self) -> bool:
        return self._assoc is not None

    def _drop_connection(self, *, graceful: bool = True) -> None:
        """Release (``graceful``, when still established) or abort the kept association."""
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        try:
            if graceful and assoc.is_established:
                assoc.release()
            elif assoc.is_established or assoc.is_alive():
                assoc.abort()
        except Exception:  # noqa: BLE001 - the association is dropped either way
            logger.debug("%r: closing the association failed", self, exc_info=True)

    def _status_outcome(self, status: Dataset | None) -> SendOutcome:
        if not status or "Status" not in status:
            return SendOutcome.retry("no C-STORE response (timeout or aborted association)")
        return self.classify(int(status.Status), comment=str(status.get("ErrorComment", "")))

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


def _no_delay(assoc: Association) -> None:
    """Turn Nagle off on an association's socket. pynetdicom writes a C-STORE as a command PDU followed by
    data PDUs; with Nagle on, each data PDU waits for the ACK of the one before, which a peer that delays
    its ACKs (Linux: up to 40 ms) holds back on every object."""
    transport = assoc.dul.socket
    with contextlib.suppress(AttributeError, OSError):
        if transport is not None and transport.socket is not None:
            transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _StoreObject:
    """What :meth:`DicomStoreSender.send` stores: a dataset, or Part 10 bytes read only up to their file meta.

    Attributes
    ----------
    sop_class_uid, sop_instance_uid:
        From the dataset, or from the file meta (Media Storage SOP Class / Instance UID) of the bytes.
    transfer_syntax:
        The file meta's Transfer Syntax UID, if any.
    encoded:
        Part 10 bytes whose data set is Explicit VR Little Endian, sent as they are where that transfer
        syntax was accepted; ``None`` for a dataset (or bytes decoded up front).
    """

    def __init__(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str | None,
        *,
        dataset: Dataset | None = None,
        encoded: bytes | None = None,
    ) -> None:
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax = transfer_syntax
        self.encoded = encoded
        self._dataset = dataset
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._path: Path | None = None

    @classmethod
    def of(cls, payload: bytes | Dataset) -> _StoreObject:
        """The object to store for ``payload`` (raises :class:`BuildError` like :func:`_as_dataset`)."""
        if isinstance(payload, bytes | bytearray):
            data = bytes(payload)
            meta = _read_file_meta(data)
            if meta is not None:
                return cls(*meta, encoded=data)
        ds = _as_dataset(payload)
        return cls(str(ds.SOPClassUID), str(ds.SOPInstanceUID), _transfer_syntax(ds), dataset=ds)

    def dataset(self) -> Dataset:
        """The decoded dataset (Part 10 bytes are parsed on the first call)."""
        if self._dataset is None:
            assert self.encoded is not None
            self._dataset = _as_dataset(self.encoded)
        return self._dataset

    def file(self, spool_dir: str | os.PathLike[str] | None = None) -> Path:
        """The Part 10 bytes as a file in a private temporary directory (mode 0700), written once; removed
        by :meth:`close`.

        Raises
        ------
        OSError
            The file could not be written.
        """
        if self._path is None:
            assert self.encoded is not None
            self._tmp = tempfile.TemporaryDirectory(
                prefix="ecgcad-cstore-", dir=spool_dir, ignore_cleanup_errors=True
            )
            try:
                path = Path(self._tmp.name) / "object.dcm"
                path.write_bytes(self.encoded)
            except OSError:
                self.close()
                raise
            self._path = path
        return self._path

    def close(self) -> None:
        """Remove the temporary file, if any."""
        tmp, self._tmp, self._path = self._tmp, None, None
        if tmp is not None:
            tmp.cleanup()


def _read_file_meta(data: bytes) -> tuple[str, str, str] | None:
    """``(SOP Class UID, SOP Instance UID, Explicit VR Little Endian)`` from the file meta of Part 10 bytes
    whose data set is Explicit VR Little Endian; ``None`` for any other bytes. Only the preamble and the
    file meta group are parsed."""
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_after_group_2)
        syntax = meta.get("TransferSyntaxUID")
        sop_class = meta.get("MediaStorageSOPClassUID")
        sop_instance = meta.get("MediaStorageSOPInstanceUID")
    except Exception:  # noqa: BLE001 - not Part 10 bytes: decoded (and refused) as before
        return None
    if syntax != ExplicitVRLittleEndian or not sop_class or not sop_instance:
        return None
    return str(sop_class), str(sop_instance), ExplicitVRLittleEndian


def _after_group_2(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag.group != 2)


def _c_store(
    assoc: Association, obj: _StoreObject, spool_dir: str | os.PathLike[str] | None = None
) -> Dataset:
    """``assoc.send_c_store`` of ``obj``: the encoded data set as it is when the peer accepted the SOP class
    with Explicit VR Little Endian, else the dataset (which pynetdicom encodes for the accepted context).

    Raises what ``send_c_store`` raises (``ValueError``: no accepted presentation context).
    """
    if obj.encoded is not None and _accepted(assoc, obj.sop_class_uid, ExplicitVRLittleEndian):
        try:
            path = obj.file(spool_dir)
        except OSError:
            logger.warning("C-STORE: could not write the object to a temporary file; sending it decoded")
        else:
            # pynetdicom sends a file's data set without decoding it only with this setting (otherwise
            # it reads the file with dcmread and encodes it again). It concerns C-STOREs of a file path,
            # which nothing else here makes.
            from pynetdicom import _config

            _config.STORE_SEND_CHUNKED_DATASET = True
            return assoc.send_c_store(path)  # type: ignore[no-any-return]
    return assoc.send_c_store(obj.dataset())  # type: ignore[no-any-return]


def _accepted(assoc: Association, sop_class_uid: str, transfer_syntax: str) -> bool:
    """Whether the peer accepted ``sop_class_uid`` with ``transfer_syntax`` for us as SCU on ``assoc``."""
    return any(
        cx.abstract_syntax == sop_class_uid and cx.transfer_syntax[0] == transfer_syntax and cx.as_scu
        for cx in assoc.accepted_contexts
    )


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


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")
