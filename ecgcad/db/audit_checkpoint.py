"""Signed checkpoints of the audit chain, kept outside the database.

A hash chain shows a changed, inserted or removed row, but not that its last rows were removed: the shorter
chain is still a valid chain. A checkpoint records, at one moment, the number of events, the last event's id
and its hash (the chain's head), signed with the audit key (HMAC-SHA-256). ``ecgcad audit verify`` then
requires that the chain still holds that many events and that its event number ``count`` is that id with
that hash: removing events up to the checkpoint, or rewriting any event before it (even with a recomputed
chain), fails.

Checkpoints are written (one JSON file, replaced atomically, ``0600``):

* by the scheduler role (``ecgcad serve``, ``ecgcad scheduler``) at start, every
  ``[audit] checkpoint_interval_s`` and at clean stop (:class:`AuditCheckpointer`); each one is also sent to
  the audit repository when ``[audit_syslog]`` forwarding is on, so that a copy is out of this host's reach;
* by ``ecgcad migrate`` and ``ecgcad audit checkpoint``.

A new checkpoint is written only if the chain still matches the previous one and verifies from it to the
new head: a checkpoint never blesses a truncated or rewritten chain.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from ecgcad.db.audit import GENESIS, ChainReport, verify_session
from ecgcad.db.audit_key import AuditKey
from ecgcad.db.models import AuditEvent
from ecgcad.db.objects import write_atomically
from ecgcad.db.prepared import Prepared
from ecgcad.db.session import Database
from ecgcad.errors import AuditIntegrityError

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

#: The checkpoint format (the ``version`` field of the file).
VERSION = 1
_HEX = frozenset("0123456789abcdef")


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The audit chain's length and head at one moment, signed with the audit key.

    Parameters
    ----------
    count:
        Events in the chain.
    last_id:
        Id of the last event (0 for an empty chain).
    head:
        Hash of the last event (:data:`~ecgcad.db.audit.GENESIS` for an empty chain).
    keyed:
        The chain holds keyed events (every later event must be keyed).
    key_id:
        The audit key that signed it (:attr:`AuditKey.key_id`).
    written_at:
        When it was taken (ISO 8601 UTC).
    signature:
        HMAC-SHA-256 of :meth:`payload` with the audit key, 64 hex digits.

    Raises
    ------
    ValueError
        A field is out of range or malformed.
    """

    count: int
    last_id: int
    head: str
    keyed: bool
    key_id: str
    written_at: str
    signature: str

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 0:
            raise ValueError("count must be a non-negative integer")
        if not isinstance(self.last_id, int) or isinstance(self.last_id, bool) or self.last_id < 0:
            raise ValueError("last_id must be a non-negative integer")
        if (self.count == 0) != (self.last_id == 0) or self.last_id and self.last_id < self.count:
            raise ValueError("count and last_id disagree")
        if not _is_hex(self.head, 64) or (self.count == 0 and self.head != GENESIS):
            raise ValueError("head must be 64 hex digits (the genesis hash for an empty chain)")
        if not isinstance(self.keyed, bool):
            raise ValueError("keyed must be true or false")
        if not _is_hex(self.key_id, 16):
            raise ValueError("key_id must be 16 hex digits")
        try:
            dt.datetime.fromisoformat(self.written_at)
        except (TypeError, ValueError):
            raise ValueError("written_at must be an ISO 8601 time") from None
        if not _is_hex(self.signature, 64):
            raise ValueError("signature must be 64 hex digits")

    @classmethod
    def sign(cls, key: AuditKey, report: ChainReport, written_at: dt.datetime | None = None) -> Checkpoint:
        """A checkpoint of a verified chain (``report.ok``), signed with ``key``.

        Raises
        ------
        ValueError
            ``report`` is not of an intact chain.
        """
        if not report.ok:
            raise ValueError("only an intact chain is checkpointed")
        when = (written_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
        fields = {
            "count": report.checked,
            "last_id": report.last_id,
            "head": report.head,
            "keyed": report.keyed,
            "key_id": key.key_id,
            "written_at": when,
        }
        return cls(**fields, signature=key.mac(_payload(fields)))  # type: ignore[arg-type]

    def payload(self) -> bytes:
        """The signed bytes: the canonical JSON of every field but the signature, with the format version."""
        fields = asdict(self)
        del fields["signature"]
        return _payload(fields)

    def verify_signature(self, key: AuditKey) -> bool:
        """True when ``key`` signed this checkpoint."""
        return self.key_id == key.key_id and hmac.compare_digest(self.signature, key.mac(self.payload()))

    def to_json(self) -> str:
        """The checkpoint as one line of JSON (the file's and the syslog message's content)."""
        return json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        """Parse :meth:`to_json` output.

        Raises
        ------
        ValueError
            Not a checkpoint of this format.
        """
        try:
            data = json.loads(text)
        except ValueError:
            raise ValueError("not JSON") from None
        if not isinstance(data, dict) or data.pop("version", None) != VERSION:
            raise ValueError(f"not a version {VERSION} checkpoint")
        try:
            return cls(**data)
        except TypeError:
            raise ValueError("unexpected or missing fields") from None


def _payload(fields: dict[str, Any]) -> bytes:
    return json.dumps({"version": VERSION, **fields}, sort_keys=True, separators=(",", ":")).encode()


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """The checkpoint in ``path`` (``None`` when there is no file).

    Raises
    ------
    AuditIntegrityError
        The file is unreadable or not a checkpoint.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditIntegrityError(f"audit checkpoint {path} is unreadable: {exc}") from exc
    try:
        return Checkpoint.from_json(text)
    except ValueError as exc:
        raise AuditIntegrityError(f"audit checkpoint {path} is invalid: {exc}") from exc


def write_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Replace the checkpoint file atomically (``0600``, flushed to disk with its folder)."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, (checkpoint.to_json() + "\n").encode("utf-8"))


def _signed_checkpoint(db: Database, path: str | os.PathLike[str]) -> tuple[AuditKey, Checkpoint | None]:
    """The key and the verified previous checkpoint (``None``: no file yet).

    Raises
    ------
    AuditIntegrityError
        No key, or the file is invalid or not signed with the key.
    """
    key: AuditKey | None = db.audit_key
    if key is None:
        raise AuditIntegrityError("no audit key is configured")
    previous = read_checkpoint(path)
    if previous is not None and not previous.verify_signature(key):
        raise AuditIntegrityError(
            f"audit checkpoint {path} is not signed with the audit key {key.key_id} "
            f"(it names key {previous.key_id}): the file was altered or the key replaced"
        )
    return key, previous


_HASH_OF = Prepared(select(AuditEvent.hash).where(AuditEvent.id == bindparam("id")))
_COUNT_UP_TO = Prepared(select(func.count()).select_from(AuditEvent).where(AuditEvent.id <= bindparam("id")))


def _still_there(session: Session, checkpoint: Checkpoint) -> str | None:
    """Why the chain no longer holds ``checkpoint``'s events, or ``None`` when it does."""
    if checkpoint.count == 0:
        return None
    head = _HASH_OF.execute(session, {"id": checkpoint.last_id})
    if head is None:
        return f"event {checkpoint.last_id}, the head of the checkpoint of {checkpoint.written_at}, is gone"
    if head != checkpoint.head:
        return (
            f"event {checkpoint.last_id} no longer has the hash of the checkpoint of {checkpoint.written_at}"
        )
    count = int(_COUNT_UP_TO.execute(session, {"id": checkpoint.last_id}))
    if count != checkpoint.count:
        return (
            f"{count} events up to id {checkpoint.last_id}, but the checkpoint of {checkpoint.written_at} "
            f"counts {checkpoint.count}"
        )
    return None


def take_checkpoint(db: Database, path: str | os.PathLike[str]) -> Checkpoint:
    """Verify the chain from the previous checkpoint to its head, then sign and write a new checkpoint.

    Without a previous checkpoint the whole chain is verified first.

    Parameters
    ----------
    db:
        The database, with its audit key.
    path:
        The checkpoint file.

    Returns
    -------
    Checkpoint
        The checkpoint written.

    Raises
    ------
    AuditIntegrityError
        No key; the previous checkpoint is invalid; or the chain no longer matches it or does not verify
        after it. Nothing is written then.
    """
    key, previous = _signed_checkpoint(db, path)
    with db.read_session() as session:
        problem = _still_there(session, previous) if previous is not None else None
        if problem is not None:
            raise AuditIntegrityError(f"audit chain does not match its checkpoint: {problem}")
        report = verify_session(session, after=previous)
    if not report.ok:
        where = f" at event {report.first_broken_id}" if report.first_broken_id is not None else ""
        raise AuditIntegrityError(f"audit chain broken{where}: {report.reason}")
    checkpoint = Checkpoint.sign(key, report)
    write_checkpoint(path, checkpoint)
    return checkpoint


def verify_database(db: Database, path: str | os.PathLike[str]) -> tuple[ChainReport, Checkpoint | None]:
    """The whole chain verified with the audit key and against the checkpoint in ``path``.

    Returns
    -------
    tuple[ChainReport, Checkpoint | None]
        The report (not ``ok`` for a broken chain, a missing, invalid or foreign checkpoint, or a chain that
        no longer reaches the checkpoint's count and head) and the checkpoint used.
    """
    try:
        key, checkpoint = _signed_checkpoint(db, path)
    except AuditIntegrityError as exc:
        return ChainReport(False, 0, None, str(exc)), None
    with db.read_session() as session:
        report = verify_session(session, checkpoint=checkpoint)
    if report.ok and checkpoint is None:
        report = ChainReport(
            False,
            report.checked,
            None,
            f"no audit checkpoint at {path}: truncation cannot be ruled out "
            "(write one with `ecgcad audit checkpoint`)",
            report.head,
            report.last_id,
            report.keyed,
        )
    return report, checkpoint


class AuditCheckpointer:
    """A start/stop component of the scheduler role: a checkpoint at start and every interval.

    A chain that no longer matches the last checkpoint is logged as an error (once per distinct problem)
    and no checkpoint is written until an administrator has looked (``ecgcad audit verify``).

    Parameters
    ----------
    ctx:
        The application context (settings, database, components: a running ``audit-syslog`` forwarder
        gets each checkpoint).
    """

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.path = ctx.settings.audit_checkpoint_file
        self.interval_s = float(ctx.settings.audit.checkpoint_interval_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last: Checkpoint | None = None
        self.last_error: str | None = None

    @property
    def alive(self) -> bool:
        """True while the checkpoint thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Checkpoint now and then every interval, in a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ecgcad-audit-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (the service writes the final checkpoint after its last event)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def checkpoint_once(self) -> Checkpoint | None:
        """Take one checkpoint; ``None`` when the chain does not allow it (logged)."""
        with self._lock:
            try:
                checkpoint = take_checkpoint(self.ctx.db, self.path)
            except AuditIntegrityError as exc:
                if self.last_error != str(exc):
                    logger.error("no audit checkpoint written: %s — run `ecgcad audit verify`", exc)
                self.last_error = str(exc)
                return None
            self.last, self.last_error = checkpoint, None
        forwarder = self.ctx.components.get("audit-syslog")
        if forwarder is not None:
            forwarder.offer_checkpoint(checkpoint)
        return checkpoint

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.checkpoint_once()
            except Exception:  # noqa: BLE001 - try again at the next interval
                logger.exception("audit checkpoint failed")
            self._stop.wait(self.interval_s)
