"""Durable ingest: raw bytes to the object store, then one transaction with the rows and the job.

Every entry point (DICOM SCP, MLLP server, folder drop, CLI, PACS poll) calls :class:`Ingestor`; only after
its method returns may the caller acknowledge the sender (C-STORE ``0x0000``, HL7 ``AA``/``CA``).

Job kinds created here:

* ``score`` ``{"ecg_id": …}`` — an ECG row exists (DICOM, decoded or with its decode failure recorded).
* ``hl7`` ``{"source_object_id": …}`` — a stored HL7 message to parse in the worker (ORU → ECG row + score;
  ORM/OMG/ADT → order row).
* ``decode`` ``{"source_object_id": …}`` — a stored file of any supported format to decode in the worker.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ecgcad.db import audit
from ecgcad.db.models import EcgRecord, SourceObject
from ecgcad.db.objects import ObjectStore
from ecgcad.db.session import Database
from ecgcad.errors import BackPressureError, EcgcadError, StorageError
from ecgcad.integration.ecg import Ecg, EcgIdentifiers
from ecgcad.jobs.queue import JobQueue
from ecgcad.logsetup import uid_hash

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    """What :class:`Ingestor` stored."""

    source_object_id: int
    ecg_id: int | None
    job_id: int | None
    duplicate: bool = False
    new_version: bool = False


def _copy_identifiers(row: EcgRecord, ids: EcgIdentifiers) -> None:
    for name in EcgRecord.IDENTIFIER_COLUMNS:
        value = getattr(ids, name, None)
        length = getattr(EcgRecord.__table__.c[name].type, "length", None)
        if isinstance(value, str) and length:
            value = value[:length]  # over-long vendor values must not make the row unstorable
        setattr(row, name, value)
    row.identifiers = ids.to_dict()


def ecg_row_from(ecg: Ecg | None, source_object_id: int) -> EcgRecord:
    """An :class:`EcgRecord` with the identifiers of ``ecg`` (or an empty one when decoding failed)."""
    row = EcgRecord(source_object_id=source_object_id, state="queued")
    if ecg is None:
        return row
    _copy_identifiers(row, ecg.identifiers)
    row.format = ecg.format
    row.sampling_rate = float(ecg.sampling_rate)
    row.duration_s = float(ecg.duration_s)
    row.leads = list(ecg.source_leads)
    row.derived_leads = list(ecg.derived_leads)
    row.notes = list(ecg.notes)
    row.decode_status = "decoded"
    return row


class Ingestor:
    """Stores incoming objects durably and queues their work.

    Parameters
    ----------
    db, store, queue:
        Database, raw object store and job queue.
    max_depth:
        Back-pressure: refuse new input when this many jobs are waiting or running.
    on_enqueue:
        Called after each commit that queued work (wakes the in-process worker).
    """

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        queue: JobQueue,
        *,
        max_depth: int = 100_000,
        on_enqueue: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.queue = queue
        self.max_depth = max_depth
        self.on_enqueue = on_enqueue
        self._depth_cache: tuple[float, int] = (0.0, 0)
        self._lock = threading.Lock()
        self._group_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._leader_active = False
        #: Most objects committed together in one group.
        self.max_group = 64

    # -- back-pressure -----------------------------------------------------------------------------------
    def check_capacity(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`BackPressureError` when the queue is too deep or the disk under its reserve."""
        import time

        self.store.check_space(incoming_bytes)
        now = time.monotonic()
        with self._lock:
            stamp, depth = self._depth_cache
            if now - stamp > 0.5:
                depth = self.queue.depth()
                self._depth_cache = (now, depth)
        if depth >= self.max_depth:
            raise BackPressureError(f"job queue depth {depth} is at its limit {self.max_depth}")

    def _source(self, session: Session, data: bytes, sha: str, path: str, **fields: Any) -> SourceObject:
        obj = SourceObject(sha256=sha, size=len(data), storage_path=path, **fields)
        session.add(obj)
        session.flush()
        return obj

    def _existing(self, session: Session, sha: str) -> SourceObject | None:
        return session.execute(select(SourceObject).where(SourceObject.sha256 == sha)).scalar_one_or_none()

    def _notify(self) -> None:
        if self.on_enqueue is not None:
            try:
                self.on_enqueue()
            except Exception:  # noqa: BLE001 - waking is best effort
                logger.debug("on_enqueue failed", exc_info=True)

    # -- group commit ------------------------------------------------------------------------------------
    def _submit(
        self, data: bytes, apply: Callable[[Session, SourceObject | None, str, str], IngestResult]
    ) -> IngestResult:
        """Store ``data`` and run ``apply`` in a transaction shared with concurrent callers (group commit).

        The first caller to arrive becomes the leader: it takes every pending item (up to
        :attr:`max_group`), writes their objects, flushes them to stable storage with one ``syncfs``, runs
        every item's ``apply`` in one database transaction (each in its own savepoint, so one bad item does
        not sink the others), commits, and wakes the callers. Only then does any caller return, so an
        acknowledgement always follows a durable commit.
        """
        item = _Pending(data, apply)
        with self._group_lock:
            self._pending.append(item)
            leader = not self._leader_active
            if leader:
                self._leader_active = True
        if not leader:
            item.done.wait()
        else:
            while True:
                with self._group_lock:
                    group = self._pending[: self.max_group]
                    del self._pending[: self.max_group]
                    if not group:
                        self._leader_active = False
                        break
                self._commit_group(group)
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _commit_group(self, group: list[_Pending]) -> None:
        try:
            try:
                self.check_capacity(sum(len(i.data) for i in group))
                paths = [self.store.put(i.data, sync=False) for i in group]
                self.store.sync()
            except EcgcadError as exc:
                for i in group:
                    i.error = exc
                return
            try:
                with self.db.session() as session:
                    for i, (sha, path) in zip(group, paths, strict=True):
                        try:
                            with session.begin_nested():
                                i.result = i.apply(session, self._existing(session, sha), sha, str(path))
                        except Exception as exc:  # noqa: BLE001 - this item fails, the group goes on
                            logger.exception("ingest of one object failed")
                            i.error = StorageError(f"could not store the object: {type(exc).__name__}")
            except EcgcadError as exc:
                for i in group:
                    i.result, i.error = None, exc
            except Exception as exc:  # noqa: BLE001 - commit failed: nobody is acknowledged
                logger.exception("group commit of %d objects failed", len(group))
                for i in group:
                    i.result, i.error = None, StorageError(f"database commit failed: {type(exc).__name__}")
            if any(i.result is not None and i.result.job_id is not None for i in group):
                self._notify()
        finally:
            for i in group:
                if i.result is None and i.error is None:
                    i.error = StorageError("object was not stored")
                i.done.set()

    # -- DICOM -------------------------------------------------------------------------------------------
    def ingest_dicom(
        self,
        data: bytes,
        *,
        sop_class_uid: str | None,
        sop_instance_uid: str | None,
        ecg: Ecg | None,
        decode_error: str | None = None,
        calling_ae: str | None = None,
        peer_address: str | None = None,
        kind: str = "dicom",
        identifiers: EcgIdentifiers | None = None,
    ) -> IngestResult:
        """Store one DICOM instance (decoded to ``ecg``, or with ``decode_error``) and queue its scoring.

        A byte-identical instance already stored is a duplicate: nothing new is queued. The same SOP Instance
        UID with different bytes is stored as a new version and audited. When decoding failed, pass the
        ``identifiers`` read from the dataset (if any) so the "not evaluated" report reaches the right patient.

        Raises
        ------
        BackPressureError
            Queue too deep or disk under its reserve: answer "out of resources", the sender retries.
        StorageError
            The object or its rows could not be committed: nothing was stored.
        """

        def apply(session: Session, existing: SourceObject | None, sha: str, path: str) -> IngestResult:
            if existing is not None:
                ecg_id = session.execute(
                    select(EcgRecord.id).where(EcgRecord.source_object_id == existing.id)
                ).scalar()
                logger.info(
                    "duplicate DICOM instance uid#%s acknowledged, not queued again",
                    uid_hash(sop_instance_uid),
                )
                return IngestResult(existing.id, ecg_id, None, duplicate=True)
            version = 1
            if sop_instance_uid:
                prior = session.execute(
                    select(func.max(SourceObject.object_version)).where(
                        SourceObject.sop_instance_uid == sop_instance_uid
                    )
                ).scalar()
                if prior:
                    version = int(prior) + 1
            obj = self._source(
                session,
                data,
                sha,
                path,
                kind=kind,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                object_version=version,
                calling_ae=calling_ae,
                peer_address=peer_address,
            )
            row = ecg_row_from(ecg, obj.id)
            if ecg is None:
                if identifiers is not None:
                    _copy_identifiers(row, identifiers)
                row.decode_status = "failed"
                row.decode_reason = decode_error or "not decodable"
                row.sop_instance_uid = sop_instance_uid
                row.sop_class_uid = sop_class_uid
            session.add(row)
            session.flush()
            job_id = self.queue.defer(session, "score", {"ecg_id": row.id}, dedupe_key=f"score:ecg:{row.id}")
            audit.record(
                session,
                "dicom.new_version" if version > 1 else "dicom.received",
                ae_title=calling_ae,
                address=peer_address,
                patient_id=row.patient_id,
                issuer_of_patient_id=row.issuer_of_patient_id,
                study_instance_uid=row.study_instance_uid,
                sop_instance_uid=sop_instance_uid,
                ecg_id=row.id,
                detail={"sha256": sha, "object_version": version, "decode_status": row.decode_status},
            )
            logger.info("stored DICOM uid#%s as ecg %s (job %s)", uid_hash(sop_instance_uid), row.id, job_id)
            return IngestResult(obj.id, row.id, job_id, new_version=version > 1)

        return self._submit(data, apply)

    # -- HL7 ---------------------------------------------------------------------------------------------
    def ingest_hl7(
        self,
        data: bytes,
        *,
        control_id: str | None,
        message_type: str | None,
        peer_address: str | None = None,
    ) -> IngestResult:
        """Store one HL7 v2 message and queue its parsing. A retransmission (same bytes) is a duplicate.

        Raises
        ------
        BackPressureError, StorageError
            As :meth:`ingest_dicom`: answer ``AE``, the sender retries.
        """

        def apply(session: Session, existing: SourceObject | None, sha: str, path: str) -> IngestResult:
            if existing is not None:
                logger.info("retransmitted HL7 msh10#%s acknowledged, not queued again", uid_hash(control_id))
                return IngestResult(existing.id, None, None, duplicate=True)
            obj = self._source(
                session,
                data,
                sha,
                path,
                kind="hl7",
                message_control_id=control_id,
                message_type=message_type,
                peer_address=peer_address,
            )
            job_id = self.queue.defer(
                session, "hl7", {"source_object_id": obj.id}, dedupe_key=f"hl7:src:{obj.id}"
            )
            audit.record(
                session,
                "hl7.received",
                address=peer_address,
                detail={"sha256": sha, "message_type": message_type, "control_id_hash": uid_hash(control_id)},
            )
            logger.info("stored HL7 %s msh10#%s (job %s)", message_type, uid_hash(control_id), job_id)
            return IngestResult(obj.id, None, job_id)

        return self._submit(data, apply)

    # -- files -------------------------------------------------------------------------------------------
    def ingest_file(self, data: bytes, *, filename: str | None = None, kind: str = "file") -> IngestResult:
        """Store a file of any supported format and queue its decoding in the worker."""

        def apply(session: Session, existing: SourceObject | None, sha: str, path: str) -> IngestResult:
            if existing is not None:
                ecg_id = session.execute(
                    select(EcgRecord.id).where(EcgRecord.source_object_id == existing.id)
                ).scalar()
                return IngestResult(existing.id, ecg_id, None, duplicate=True)
            obj = self._source(session, data, sha, path, kind=kind)
            job_id = self.queue.defer(
                session, "decode", {"source_object_id": obj.id}, dedupe_key=f"decode:src:{obj.id}"
            )
            audit.record(session, "cli.action", detail={"action": "ingest_file", "sha256": sha, "kind": kind})
            return IngestResult(obj.id, None, job_id)

        return self._submit(data, apply)


@dataclasses.dataclass(eq=False)
class _Pending:
    data: bytes
    apply: Callable[[Session, SourceObject | None, str, str], IngestResult]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: IngestResult | None = None
    error: Exception | None = None
