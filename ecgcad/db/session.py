"""Engine and sessions for SQLite (embedded) and PostgreSQL (scale-out).

SQLite follows SQLAlchemy's documented recipe for Python's sqlite3 driver: the driver's own transaction
handling is switched off and every transaction starts with ``BEGIN IMMEDIATE``, so that writers serialise on
the database lock at BEGIN rather than failing later with "database is locked". The database runs in WAL
mode with ``foreign_keys`` on and a ``busy_timeout``.

A thread holds at most one write session (:meth:`Database.session` or :meth:`Database.direct_transaction`)
of a database at a time: a nested one is refused at once with :class:`~ecgcad.errors.NestedWriteError`.
On SQLite it would wait out the busy timeout for the lock its own thread holds, stalling every other
writer of the process meanwhile; on PostgreSQL it could wait forever on a row the outer one has locked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from ecgcad.errors import NestedWriteError, StorageError

if TYPE_CHECKING:
    import sqlite3

    from sqlalchemy import Connection

    from ecgcad.config import Settings
    from ecgcad.db.audit_key import AuditKey

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: ``Session.info`` / ``DirectTransaction.info`` key of the database's audit key (``ecgcad.db.audit_key``).
AUDIT_KEY_INFO = "ecgcad_audit_key"


def _sqlite_engine(url: str, **kwargs: object) -> Engine:
    path = url.split("sqlite:///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
    )

    @event.listens_for(engine, "connect")
    def _on_connect(
        dbapi_connection: Any,  # noqa: ANN401 - the driver's raw DB-API connection (sqlite3)
        connection_record: ConnectionPoolEntry,
    ) -> None:
        # Disable pysqlite's own BEGIN handling (recipe: "Serializable isolation / Savepoints / Transactional DDL").
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock at BEGIN; read-only sessions (``Database.read_session``) use a deferred
        # BEGIN, so a long read (building a report) never blocks the listeners' commits.
        if conn.get_execution_options().get("ecgcad_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_engine(url: str, **kwargs: object) -> Engine:
    """Create an engine for ``url`` with the settings ecgcad relies on."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    return create_engine(url, pool_pre_ping=True, **kwargs)


@dataclasses.dataclass(eq=False)
class DirectTransaction:
    """An open transaction of :meth:`Database.direct_transaction`: the dialect, the driver's connection,
    and ``info`` (per transaction, like ``Session.info``)."""

    dialect: Dialect
    dbapi_connection: Any
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Database:
    """The service's database: an engine and a session factory.

    Parameters
    ----------
    url:
        SQLAlchemy URL (``sqlite:///…`` or ``postgresql+psycopg://…``).
    audit_key:
        The audit chain's HMAC key (:class:`ecgcad.db.audit_key.AuditKey`), handed to every session and
        direct transaction in ``info``; ``None`` writes unkeyed (SHA-256) events, as before keys existed —
        the service always has one (:meth:`from_settings`).
    """

    def __init__(self, url: str, *, audit_key: AuditKey | None = None, **engine_kwargs: object) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self._info: dict[str, Any] = {AUDIT_KEY_INFO: audit_key} if audit_key is not None else {}
        self._sessionmaker = sessionmaker(self.engine, expire_on_commit=False, info=self._info or None)
        self._write_lock: Any = (
            threading.RLock() if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        )
        self._kept: PoolProxiedConnection | None = None
        # Which threads hold a write session of this database (``active`` is set while one does).
        self._writer = threading.local()
        self._read_sessionmaker = sessionmaker(
            self.engine.execution_options(ecgcad_readonly=True),
            expire_on_commit=False,
            info=self._info or None,
        )

    @property
    def audit_key(self) -> AuditKey | None:
        """The audit chain's key (``None``: unkeyed events)."""
        key: AuditKey | None = self._info.get(AUDIT_KEY_INFO)
        return key

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """Build from :class:`ecgcad.config.Settings`, with the audit key of its ``[audit]`` settings.

        Raises
        ------
        ConfigurationError
            The audit key is unusable (``ecgcad.db.audit_key.load_key``).
        """
        from ecgcad.db.audit_key import load_key

        return cls(settings.effective_database_url, audit_key=load_key(settings))

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        On SQLite, writers of this process queue on an in-process lock before ``BEGIN IMMEDIATE``: SQLite's
        own busy handler makes a waiting connection sleep in growing steps (up to 100 ms), which costs far
        more than the wait itself when several threads write at once.

        Raises
        ------
        NestedWriteError
            This thread already holds a write session of this database (raised at once, before waiting
            for any lock; write in the outer session, or after it has ended).
        StorageError
            The database cannot begin or commit (locked past the busy timeout, disk full, I/O error).
        """
        self._enter_writer()
        try:
            with self._write_lock, self._sessionmaker() as session:
                try:
                    with session.begin():
                        yield session
                except StorageError:
                    raise
                except Exception as exc:
                    from sqlalchemy.exc import OperationalError

                    if isinstance(exc, OperationalError):
                        raise StorageError(f"database error: {exc.orig}") from exc
                    raise
        finally:
            self._writer.active = False

    def _enter_writer(self) -> None:
        """Mark this thread as holding a write session; refuse a nested one."""
        if getattr(self._writer, "active", False):
            raise NestedWriteError()
        self._writer.active = True

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only: on SQLite it does not take the write lock (its writes would fail
        with "database is locked" once a writer holds it, so do not write in it)."""
        with self._read_sessionmaker() as session:
            try:
                with session.begin():
                    yield session
            except Exception as exc:
                from sqlalchemy.exc import OperationalError

                if isinstance(exc, OperationalError):
                    raise StorageError(f"database error: {exc.orig}") from exc
                raise

    @contextlib.contextmanager
    def direct_transaction(self) -> Iterator[DirectTransaction]:
        """A write transaction on a driver connection that the database keeps for it (SQLite only).

        For the listeners' hot path: statements run as :class:`~ecgcad.db.prepared.Prepared` on the
        driver's connection, with no ``Session`` or ``Connection`` around them (those cost ~150 µs per
        transaction, on a commit of ~250 µs). The same lock, ``BEGIN IMMEDIATE`` and durability
        (``synchronous=FULL``) as :meth:`session`; committed on success, rolled back on any error.

        Raises
        ------
        NestedWriteError
            This thread already holds a write session of this database (raised at once).
        StorageError
            The database cannot begin or commit (locked past the busy timeout, disk full, I/O error).
            An exception in the ``with`` block rolls back and propagates as it is.
        NotImplementedError
            The database is not SQLite.
        """
        if self.dialect != "sqlite":
            raise NotImplementedError("direct transactions are for SQLite")
        import sqlite3

        self._enter_writer()
        try:
            with self._write_lock:
                if self._kept is None:
                    try:
                        self._kept = self.engine.raw_connection()
                    except DBAPIError as exc:
                        raise StorageError(f"database error: {exc.orig}") from exc
                driver: Any = self._kept.driver_connection
                try:
                    driver.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    self._drop_kept()
                    raise StorageError(f"database error: {exc}") from exc
                try:
                    yield DirectTransaction(self.engine.dialect, driver, dict(self._info))
                except BaseException:
                    self._rollback_kept(driver)
                    raise
                try:
                    driver.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._rollback_kept(driver)
                    raise StorageError(f"database error: {exc}") from exc
        finally:
            self._writer.active = False

    def _rollback_kept(self, driver: sqlite3.Connection) -> None:
        import sqlite3

        try:
            if driver.in_transaction:
                driver.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop_kept()

    def _drop_kept(self, *, broken: bool = True) -> None:
        """Forget the kept connection: invalidated when ``broken`` (never back in the pool), else closed."""
        kept, self._kept = self._kept, None
        if kept is not None:
            with contextlib.suppress(Exception):
                if broken:
                    kept.invalidate()
                else:
                    kept.close()

    def new_session(self) -> Session:
        """A plain session (the caller manages its transactions)."""
        return self._sessionmaker()

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness probe
            return False

    def dispose(self) -> None:
        """Close pooled connections (and the one kept for direct transactions)."""
        with self._write_lock:
            self._drop_kept(broken=False)
        self.engine.dispose()
