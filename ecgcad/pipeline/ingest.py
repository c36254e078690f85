"""Durable ingest: raw bytes to stable storage, then one transaction with the rows and the job.

DICOM instances and files go to the content-addressed object store (flushed with one ``syncfs`` per group,
overlapping the row inserts); HL7 messages are small and go into their source-object row, so that their
commit is their only flush. Concurrent callers share a group commit.

Every entry point (DICOM SCP, MLLP server, folder drop, CLI, PACS poll) calls :class:`Ingestor`; only after
its method returns may the caller acknowledge the sender (C-STORE ``0x0000``, HL7 ``AA``/``CA``).

Job kinds created here:

* ``score`` ``{"ecg_id": …}`` — an ECG row exists (DICOM, decoded or with its decode failure recorded).
* ``hl7`` ``{"source_object_id": …}`` — a stored HL7 message to parse in the worker (ORU → ECG row + score;
  ORM/OMG/ADT → order row).
* ``decode`` ``{"source_object_id": …}`` — a stored file of any supported format to decode in the worker.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.orm import Session

from ecgcad.db import audit
from ecgcad.db.models import IN_DATABASE, EcgRecord, SourceObject, utcnow
from ecgcad.db.objects import ObjectStore
from ecgcad.db.prepared import DirectInsert, Prepared, bound_to, insert_ignoring_conflict
from ecgcad.db.session import Database, DirectTransaction
from ecgcad.errors import BackPressureError, EcgcadError, StorageError
from ecgcad.integration.formats.ecg import Ecg, EcgIdentifiers
from ecgcad.integration.transport.hl7_ack import loggable_message_type
from ecgcad.jobs.queue import JobQueue, SqlJobQueue
from ecgcad.logsetup import uid_hash

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Hl7Message:
    """One HL7 v2 message for :meth:`Ingestor.ingest_hl7_many`: its bytes and header fields."""

    data: bytes
    control_id: str | None
    message_type: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    """What :class:`Ingestor` stored."""

    source_object_id: int
    ecg_id: int | None
    job_id: int | None
    duplicate: bool = False
    new_version: bool = False


def _identifier_values(ids: EcgIdentifiers) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in EcgRecord.IDENTIFIER_COLUMNS:
        value = getattr(ids, name, None)
        length = _COLUMN_LENGTHS.get(name)
        if isinstance(value, str) and length:
            value = value[:length]  # over-long vendor values must not make the row unstorable
        values[name] = value
    values["identifiers"] = ids.to_dict()
    return values


_COLUMN_LENGTHS: dict[str, int] = {
    c.name: c.type.length  # type: ignore[attr-defined]
    for c in EcgRecord.__table__.c
    if getattr(c.type, "length", None)
}


def ecg_values(ecg: Ecg | None, source_object_id: int) -> dict[str, Any]:
    """The column values of the ECG row of ``ecg`` (only the source and state when decoding failed)."""
    values: dict[str, Any] = {"source_object_id": source_object_id, "state": "queued"}
    if ecg is None:
        return values
    values.update(_identifier_values(ecg.identifiers))
    values.update(
        format=ecg.format,
        sampling_rate=float(ecg.sampling_rate),
        duration_s=float(ecg.duration_s),
        leads=list(ecg.source_leads),
        derived_leads=list(ecg.derived_leads),
        notes=list(ecg.notes),
        decode_status="decoded",
    )
    return values


def ecg_row_from(ecg: Ecg | None, source_object_id: int) -> EcgRecord:
    """An :class:`EcgRecord` with the identifiers of ``ecg`` (or an empty one when decoding failed)."""
    return EcgRecord(**ecg_values(ecg, source_object_id))


_EXISTING = Prepared(select(SourceObject.id).where(SourceObject.sha256 == bindparam("sha")))
_ECG_OF_SOURCE = Prepared(select(EcgRecord.id).where(EcgRecord.source_object_id == bindparam("source_id")))
_LATEST_VERSION = Prepared(
    select(func.max(SourceObject.object_version)).where(SourceObject.sop_instance_uid == bindparam("uid"))
)
_INSERT_SOURCE = Prepared(insert(SourceObject).returning(SourceObject.id))


@functools.cache
def _insert_new_source(dialect: str) -> Prepared:
    """``INSERT … ON CONFLICT (sha256) DO NOTHING RETURNING id`` for ``dialect``."""
    return Prepared(insert_ignoring_conflict(dialect, SourceObject, "sha256").returning(SourceObject.id))


#: :meth:`Ingestor._new_source` for an HL7 message in a direct transaction (SQLite).
_DIRECT_NEW_SOURCE = DirectInsert(
    SourceObject.__table__,  # type: ignore[arg-type]
    (
        "sha256",
        "size",
        "storage_path",
        "content",
        "kind",
        "message_control_id",
        "message_type",
        "peer_address",
        "object_version",
        "received_at",
    ),
    on_conflict="sha256",
    returning="id",
)
_INSERT_ECG = Prepared(insert(EcgRecord).returning(EcgRecord.id))


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
        self._sync_pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: Most objects committed together in one group.
        self.max_group = 64
        #: HL7 messages are committed in a direct transaction (SQLite with the embedded queue): no session.
        self._direct = db.dialect == "sqlite" and isinstance(queue, SqlJobQueue)

    # -- back-pressure -----------------------------------------------------------------------------------
    def check_capacity(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`BackPressureError` when the queue is too deep or the disk under its reserve."""
        self.store.check_space(incoming_bytes)
        now = time.monotonic()
        stamp, depth = self._depth_cache  # one tuple, replaced whole: read without the lock
        if now - stamp > 0.5:
            with self._lock:
                stamp, depth = self._depth_cache
                if now - stamp > 0.5:
                    depth = self.queue.depth()
                    self._depth_cache = (now, depth)
        if depth >= self.max_depth:
            raise BackPressureError(f"job queue depth {depth} is at its limit {self.max_depth}")

    @staticmethod
    def _source(session: Session, data: bytes, sha: str, path: str | None, **fields: object) -> int:
        """Insert the source-object row (bytes in the database when ``path`` is ``None``); its id."""
        values = {"sha256": sha, "size": len(data), **fields}
        if path is None:
            values.update(storage_path=IN_DATABASE, content=data)
        else:
            values["storage_path"] = path
        return int(_INSERT_SOURCE.execute(session, values))

    @staticmethod
    def _new_source(session: Tx, data: bytes, sha: str, **fields: object) -> int | None:
        """Insert the source-object row of bytes kept in the database, unless a row with ``sha`` exists
        (one statement instead of a lookup and an insert); its id, or ``None`` when it exists."""
        values = {"sha256": sha, "size": len(data), "storage_path": IN_DATABASE, "content": data, **fields}
        if isinstance(session, DirectTransaction):
            values.setdefault("object_version", 1)
            values.setdefault("received_at", utcnow())
            if len(values) != len(_DIRECT_NEW_SOURCE.columns):  # a field the direct insert would drop
                raise ValueError(
                    f"direct source insert takes {_DIRECT_NEW_SOURCE.columns}, not {sorted(values)}"
                )
            found = _DIRECT_NEW_SOURCE.execute(
                session, *[values[name] for name in _DIRECT_NEW_SOURCE.columns]
            )
        else:
            dialect, _ = bound_to(session)
            found = _insert_new_source(dialect.name).execute(session, values)
        return int(found) if found is not None else None

    @staticmethod
    def _existing(session: Tx, sha: str) -> int | None:
        found = _EXISTING.execute(session, {"sha": sha})
        return int(found) if found is not None else None

    def _notify(self) -> None:
        if self.on_enqueue is not None:
            try:
                self.on_enqueue()
            except Exception:  # noqa: BLE001 - waking is best effort
                logger.debug("on_enqueue failed", exc_info=True)

    def _defer(self, session: Tx, kind: str, payload: dict[str, Any], dedupe_key: str) -> int | None:
        """Queue a job in ``session``'s transaction (a direct one only exists with the embedded queue)."""
        if isinstance(session, DirectTransaction):
            assert isinstance(self.queue, SqlJobQueue)  # see ``_direct``
            return self.queue.defer(session, kind, payload, dedupe_key=dedupe_key)
        return self.queue.defer(session, kind, payload, dedupe_key=dedupe_key)

    # -- group commit ------------------------------------------------------------------------------------
    def _submit(self, data: bytes, apply: _Apply, *, in_database: bool = False) -> IngestResult:
        """Store ``data`` and run ``apply`` in a transaction shared with concurrent callers (group commit).

        With ``in_database`` the bytes go into the source-object row instead of the object store (small
        objects such as HL7 messages): the commit is then the only flush.
        """
        (item,) = self._submit_all([_Pending(data, apply, in_database)])
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _submit_all(self, items: list[_Pending]) -> list[_Pending]:
        """Store ``items`` together with whatever concurrent callers have pending (group commit).

        The first caller to arrive becomes the leader: it takes every pending item (up to
        :attr:`max_group`), writes their objects, flushes them to stable storage with one ``syncfs``, runs
        every item's ``apply`` in one database transaction, commits, and wakes the callers. Only then does
        any caller return, so an acknowledgement always follows a durable commit. Each item ends with its
        ``result`` or its ``error``.
        """
        with self._group_lock:
            self._pending.extend(items)
            leader = not self._leader_active
            if leader:
                self._leader_active = True
        if leader:
            while True:
                with self._group_lock:
                    group = self._pending[: self.max_group]
                    del self._pending[: self.max_group]
                    if not group:
                        self._leader_active = False
                        break
                self._commit_group(group)
        for item in items:
            item.done.wait()
        return items

    def _write_objects(self, group: list[_Pending]) -> list[tuple[str, str | None]]:
        """Write the group's file objects, not yet flushed; ``(sha256, path or None)`` per item."""
        self.check_capacity(sum(len(i.data) for i in group))
        located: list[tuple[str, str | None]] = []
        for i in group:
            if i.in_database:
                located.append((hashlib.sha256(i.data).hexdigest(), None))
            else:
                sha, path = self.store.put(i.data, sync=False)
                located.append((sha, str(path)))
        return located

    def _start_sync(self) -> concurrent.futures.Future[None]:
        """Flush the written objects (one ``syncfs``) in the background while the rows are inserted."""
        if self._sync_pool is None:  # only the group leader gets here
            self._sync_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest-sync")
        return self._sync_pool.submit(self.store.sync)

    def _apply_group(
        self,
        group: list[_Pending],
        located: list[tuple[str, str | None]],
        isolate: bool,
        synced: concurrent.futures.Future[None] | None,
    ) -> None:
        """Run every item's ``apply`` in one transaction and commit it once ``synced`` (the flush of the
        objects) has finished, so that a row never commits before its object is on stable storage.

        Without ``isolate`` any failing item fails the transaction (it raises); with it each item runs in
        its own savepoint, so a failing item gets its error and the others are committed.
        """
        with self.db.session() as session:
            for i, (sha, path) in zip(group, located, strict=True):
                i.result = i.error = None
                if not isolate:
                    existing = self._existing(session, sha) if i.look_up else None
                    i.result = i.apply(session, existing, sha, path)
                    continue
                try:
                    with session.begin_nested():
                        existing = self._existing(session, sha) if i.look_up else None
                        i.result = i.apply(session, existing, sha, path)
                except Exception as exc:  # noqa: BLE001 - this item fails, the group goes on
                    logger.exception("ingest of one object failed")
                    i.error = StorageError(f"could not store the object: {type(exc).__name__}")
            if synced is not None:
                synced.result()  # a failed flush raises StorageError: nothing is committed

    def _apply_direct(self, group: list[_Pending], located: list[tuple[str, str | None]]) -> None:
        with self.db.direct_transaction() as tx:
            for i, (sha, path) in zip(group, located, strict=True):
                assert i.direct_apply is not None
                i.result, i.error = i.direct_apply(tx, None, sha, path), None

    def _commit_group(self, group: list[_Pending]) -> None:
        try:
            try:
                located = self._write_objects(group)
            except EcgcadError as exc:
                for i in group:
                    i.error = exc
                return
            if self._direct and all(i.in_database and i.direct_apply is not None for i in group):
                # HL7 messages only: one direct transaction (SQLite). If an item fails, the group runs
                # again below, where each item gets its own savepoint.
                try:
                    self._apply_direct(group, located)
                except EcgcadError as exc:
                    for i in group:
                        i.result, i.error = None, exc
                    return
                except Exception:  # noqa: BLE001 - rolled back: the general path sorts it out
                    logger.debug("direct group commit failed, retrying per item", exc_info=True)
                else:
                    self._notify()
                    return
            synced = self._start_sync() if any(not i.in_database for i in group) else None
            # Optimistic: the whole group in one plain transaction. Only when that fails (rare) is it run
            # again with a savepoint per item, so that one bad item does not sink the others.
            attempts = (False, True) if len(group) > 1 else (False,)
            for isolate in attempts:
                try:
                    self._apply_group(group, located, isolate, synced)
                    break
                except EcgcadError as exc:
                    for i in group:
                        i.result, i.error = None, exc
                    break
                except Exception as exc:  # noqa: BLE001 - not committed: nobody is acknowledged
                    if isolate or len(group) == 1:
                        logger.exception("group commit of %d objects failed", len(group))
                    for i in group:
                        i.result, i.error = (
                            None,
                            StorageError(f"database commit failed: {type(exc).__name__}"),
                        )
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

        def apply(session: Session, existing: int | None, sha: str, path: str | None) -> IngestResult:
            if existing is not None:
                ecg_id = _ECG_OF_SOURCE.execute(session, {"source_id": existing})
                logger.info(
                    "duplicate DICOM instance uid#%s acknowledged, not queued again",
                    uid_hash(sop_instance_uid),
                )
                return IngestResult(existing, ecg_id, None, duplicate=True)
            version = 1
            if sop_instance_uid:
                prior = _LATEST_VERSION.execute(session, {"uid": sop_instance_uid})
                if prior:
                    version = int(prior) + 1
            source_id = self._source(
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
            row = ecg_values(ecg, source_id)
            if ecg is None:
                if identifiers is not None:
                    row.update(_identifier_values(identifiers))
                row.update(
                    decode_status="failed",
                    decode_reason=decode_error or "not decodable",
                    sop_instance_uid=sop_instance_uid,
                    sop_class_uid=sop_class_uid,
                )
            ecg_id = int(_INSERT_ECG.execute(session, row))
            job_id = self.queue.defer(session, "score", {"ecg_id": ecg_id}, dedupe_key=f"score:ecg:{ecg_id}")
            audit.record(
                session,
                "dicom.new_version" if version > 1 else "dicom.received",
                ae_title=calling_ae,
                address=peer_address,
                patient_id=row.get("patient_id"),
                issuer_of_patient_id=row.get("issuer_of_patient_id"),
                study_instance_uid=row.get("study_instance_uid"),
                sop_instance_uid=sop_instance_uid,
                ecg_id=ecg_id,
                detail={"sha256": sha, "object_version": version, "decode_status": row["decode_status"]},
            )
            logger.info("stored DICOM uid#%s as ecg %s (job %s)", uid_hash(sop_instance_uid), ecg_id, job_id)
            return IngestResult(source_id, ecg_id, job_id, new_version=version > 1)

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

        The message is kept in the database with its job (one transaction, one flush).

        Raises
        ------
        BackPressureError, StorageError
            As :meth:`ingest_dicom`: answer ``AE``, the sender retries.
        """
        (outcome,) = self.ingest_hl7_many(
            [Hl7Message(data, control_id, message_type)], peer_address=peer_address
        )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def ingest_hl7_many(
        self, messages: Sequence[Hl7Message], *, peer_address: str | None = None
    ) -> list[IngestResult | EcgcadError]:
        """Store several HL7 messages (frames that arrived together) in one group commit.

        Returns, per message in order, its :class:`IngestResult` or the :class:`EcgcadError`
        (:class:`BackPressureError`, :class:`StorageError`) that says why it was not stored.
        """
        pending = []
        for m in messages:
            apply = self._hl7_apply(m, peer_address)
            pending.append(_Pending(m.data, apply, True, look_up=False, direct_apply=apply))
        items = self._submit_all(pending)
        out: list[IngestResult | EcgcadError] = []
        for item in items:
            if item.result is not None:
                out.append(item.result)
            else:
                error = item.error
                out.append(error if isinstance(error, EcgcadError) else StorageError("object was not stored"))
        return out

    def _hl7_apply(self, message: Hl7Message, peer_address: str | None) -> _DirectApply:
        data, control_id, message_type = message.data, message.control_id, message.message_type

        def apply(session: Tx, existing: int | None, sha: str, path: str | None) -> IngestResult:
            source_id = self._new_source(
                session,
                data,
                sha,
                kind="hl7",
                message_control_id=control_id,
                message_type=message_type,
                peer_address=peer_address,
            )
            control = uid_hash(control_id)
            if source_id is None:
                existing = self._existing(session, sha)
                if existing is None:  # the conflict was on the SHA-256: the row is there
                    raise StorageError("source object vanished during its insert")
                logger.info("retransmitted HL7 msh10#%s acknowledged, not queued again", control)
                return IngestResult(existing, None, None, duplicate=True)
            job_id = self._defer(session, "hl7", {"source_object_id": source_id}, f"hl7:src:{source_id}")
            audit.record(
                session,
                "hl7.received",
                address=peer_address,
                detail={"sha256": sha, "message_type": message_type, "control_id_hash": control},
            )
            # MSH-9 as sent can be any text when accept_other_types is on: only a well-formed type is logged
            logged_type = loggable_message_type(message_type)
            logger.info("stored HL7 %s msh10#%s (job %s)", logged_type, control, job_id)
            return IngestResult(source_id, None, job_id)

        return apply

    # -- files -------------------------------------------------------------------------------------------
    def ingest_file(self, data: bytes, *, filename: str | None = None, kind: str = "file") -> IngestResult:
        """Store a file of any supported format and queue its decoding in the worker."""

        def apply(session: Session, existing: int | None, sha: str, path: str | None) -> IngestResult:
            if existing is not None:
                ecg_id = _ECG_OF_SOURCE.execute(session, {"source_id": existing})
                return IngestResult(existing, ecg_id, None, duplicate=True)
            source_id = self._source(session, data, sha, path, kind=kind)
            job_id = self.queue.defer(
                session, "decode", {"source_object_id": source_id}, dedupe_key=f"decode:src:{source_id}"
            )
            audit.record(session, "cli.action", detail={"action": "ingest_file", "sha256": sha, "kind": kind})
            return IngestResult(source_id, None, job_id)

        return self._submit(data, apply)


#: ``apply(session, existing source-object id or None, sha256, path or None for bytes in the database)``
_Apply = Callable[[Session, "int | None", str, "str | None"], IngestResult]
Tx = Session | DirectTransaction
#: An ``apply`` that also runs in a :class:`DirectTransaction`.
_DirectApply = Callable[[Tx, "int | None", str, "str | None"], IngestResult]


@dataclasses.dataclass(eq=False)
class _Pending:
    data: bytes
    apply: _Apply
    in_database: bool = False
    #: Look up an existing row with the same SHA-256 before ``apply`` (else ``apply`` does it itself).
    look_up: bool = True
    #: ``apply`` again, for a :class:`DirectTransaction` (``None``: it needs a session).
    direct_apply: _DirectApply | None = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: IngestResult | None = None
    error: Exception | None = None
