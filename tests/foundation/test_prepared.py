"""Prepared statements and direct transactions: the same rows as SQLAlchemy writes, in the caller's
transaction (savepoints included), and the HL7 fast path stores what the session path stores."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select

from ecgcad.db import audit
from ecgcad.db.models import AuditEvent, Job, SourceObject
from ecgcad.db.objects import ObjectStore
from ecgcad.db.prepared import Prepared
from ecgcad.db.session import Database
from ecgcad.errors import StorageError
from ecgcad.jobs.queue import SqlJobQueue
from ecgcad.pipeline.ingest import Hl7Message, Ingestor, _Pending
from tests.helpers import count_rows

_INSERT = Prepared(insert(SourceObject).returning(SourceObject.id))
_BY_SHA = Prepared(select(SourceObject.id).where(SourceObject.sha256 == bindparam("sha")))
_LATEST = Prepared(select(SourceObject.id).order_by(SourceObject.id.desc()).limit(1))


def _source(sha: str) -> dict[str, Any]:
    return {"sha256": sha, "size": 3, "storage_path": "/x", "kind": "file"}


def test_insert_applies_column_defaults_and_the_types_bind_processing(db: Database) -> None:
    before = dt.datetime.now(dt.UTC)
    with db.session() as s:
        new_id = _INSERT.execute(s, _source("a" * 64))
    with db.session() as s:
        row = s.get(SourceObject, new_id)
        assert row is not None and row.sha256 == "a" * 64 and row.kind == "file"
        assert row.object_version == 1, "the column's Python-side default"
        assert row.received_at.tzinfo is not None and before <= row.received_at <= dt.datetime.now(dt.UTC)


def test_select_with_a_parameter_and_with_a_bound_limit(db: Database) -> None:
    with db.session() as s:
        first = _INSERT.execute(s, _source("a" * 64))
        second = _INSERT.execute(s, _source("b" * 64))
        assert _BY_SHA.execute(s, {"sha": "a" * 64}) == first
        assert _BY_SHA.execute(s, {"sha": "c" * 64}) is None
        assert _LATEST.execute(s, {}) == second


def test_a_missing_value_is_refused() -> None:
    from sqlalchemy.dialects import sqlite

    with pytest.raises(ValueError, match="needs values for"):
        _BY_SHA._compile(sqlite.dialect(), ())  # noqa: SLF001


def test_statements_after_a_savepoint_begins_are_inside_it(db: Database) -> None:
    """The kept connection is dropped when a savepoint begins, so that its SAVEPOINT is emitted first."""
    with db.session() as s:
        _INSERT.execute(s, _source("a" * 64))
        try:
            with s.begin_nested():
                _INSERT.execute(s, _source("b" * 64))
                raise RuntimeError("undo b")
        except RuntimeError:
            pass
        _INSERT.execute(s, _source("c" * 64))
    with db.session() as s:
        shas = s.execute(select(SourceObject.sha256).order_by(SourceObject.id)).scalars().all()
    assert shas == ["a" * 64, "c" * 64]


def test_direct_transaction_commits_or_rolls_back(sqlite_db: Database) -> None:
    with sqlite_db.direct_transaction() as tx:
        _INSERT.execute(tx, _source("a" * 64))
        audit.record(tx, "cli.action", detail={"n": 1})
        audit.record(tx, "cli.action", detail={"n": 2})
    with pytest.raises(RuntimeError), sqlite_db.direct_transaction() as tx:
        _INSERT.execute(tx, _source("b" * 64))
        audit.record(tx, "cli.action", detail={"n": 3})
        raise RuntimeError("roll back")
    with sqlite_db.session() as s:
        audit.record(s, "cli.action", detail={"n": 4})
    with sqlite_db.direct_transaction() as tx:
        audit.record(tx, "cli.action", detail={"n": 5})
    assert count_rows(sqlite_db, SourceObject) == 1
    with sqlite_db.session() as s:
        report = audit.verify_session(s)
        details = s.execute(select(AuditEvent.detail).order_by(AuditEvent.id)).scalars().all()
    assert report.ok, report.reason
    assert [d["n"] for d in details] == [1, 2, 4, 5]


def test_direct_transaction_reports_a_locked_database_as_storage_error(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    path = sqlite_db.engine.url.database
    assert path is not None
    monkeypatch.setattr("ecgcad.db.session.SQLITE_BUSY_TIMEOUT_MS", 100)
    db = Database(sqlite_db.url)
    other = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StorageError, match="locked"), db.direct_transaction():
            pass
    finally:
        other.execute("ROLLBACK")
        other.close()
    with db.direct_transaction() as tx:  # the lock is free again: a new connection is taken
        _INSERT.execute(tx, _source("a" * 64))
    db.dispose()
    assert count_rows(sqlite_db, SourceObject) == 1


def test_direct_transaction_is_for_sqlite_only(postgres_server: Any) -> None:
    from ecgcad.db.migrate import upgrade

    url = postgres_server.create_database()
    upgrade(url)
    db = Database(url)
    with pytest.raises(NotImplementedError), db.direct_transaction():
        pass
    db.dispose()


def _hl7(i: int) -> bytes:
    return f"MSH|^~\\&|CART|WARD|ECGCAD|HOSP|20240101120000||ORU^R01|M{i}|P|2.5.1\rPID|1||P{i}\r".encode()


_STORED_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def _stored(db: Database) -> dict[str, list[dict[str, Any]]]:
    """Every column of every row an HL7 ingest wrote, as SQLite stores it (text, not Python values).

    Timestamps must have SQLAlchemy's text form and are then masked; so are the audit hashes, which
    cover the timestamps (the chain is verified instead).
    """
    import sqlite3

    path = db.engine.url.database
    assert path is not None
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        for table in ("source_objects", "jobs", "audit_events"):
            rows = []
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY id"):  # noqa: S608 - our table names
                stored = dict(row)
                for name, value in stored.items():
                    if name.endswith("_at") or name in {"run_after"}:
                        assert value is None or _STORED_TIME.match(value), (table, name, value)
                        stored[name] = "<time>" if value is not None else None
                if table == "audit_events":
                    stored["prev_hash"] = stored["hash"] = "<hash>"
                rows.append(stored)
            out[table] = rows
    finally:
        conn.close()
    with db.session() as s:
        assert audit.verify_session(s).ok
    return out


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "unkeyed"])
def test_hl7_direct_path_stores_what_the_session_path_stores(tmp_path: Path, keyed: bool) -> None:
    """Column by column, as stored: the direct path (its own INSERTs) and the session path agree, the audit
    chain's key id included (and its HMAC, by the chain verified with that key)."""
    from ecgcad.db.audit_key import AuditKey
    from ecgcad.db.migrate import upgrade

    key = AuditKey("k" * 40) if keyed else None
    stored = []
    for direct in (True, False):
        url = f"sqlite:///{tmp_path / f'direct-{direct}.db'}"
        upgrade(url)
        db = Database(url, audit_key=key)
        ingestor = Ingestor(db, ObjectStore(tmp_path / f"objects-{direct}"), SqlJobQueue(db, max_attempts=7))
        ingestor._direct = direct  # noqa: SLF001
        outcomes = ingestor.ingest_hl7_many(
            [Hl7Message(_hl7(i), f"M{i}", "ORU^R01") for i in range(3)], peer_address="10.0.0.9"
        )
        ingestor.ingest_hl7_many([Hl7Message(_hl7(3), None, None)])  # no MSH-10, no type, no peer
        again = ingestor.ingest_hl7(_hl7(1), control_id="M1", message_type="ORU^R01", peer_address="10.0.0.9")
        assert again.duplicate and again.job_id is None
        assert again.source_object_id == outcomes[1].source_object_id  # type: ignore[union-attr]
        stored.append(_stored(db))
        db.dispose()
    direct_rows, session_rows = stored
    assert [len(direct_rows[t]) for t in ("source_objects", "jobs", "audit_events")] == [4, 4, 4]
    assert direct_rows == session_rows
    assert {event["key_id"] for event in direct_rows["audit_events"]} == {key.key_id if key else None}
    assert {job["max_attempts"] for job in direct_rows["jobs"]} == {7}


def test_direct_insert_refuses_a_column_the_table_lacks() -> None:
    from ecgcad.db.prepared import DirectInsert

    with pytest.raises(KeyError):
        DirectInsert(SourceObject.__table__, ("sha256", "no_such_column"))  # type: ignore[arg-type]


def test_a_failing_item_in_a_direct_group_does_not_sink_the_others(
    sqlite_db: Database, tmp_path: Path
) -> None:
    ingestor = Ingestor(sqlite_db, ObjectStore(tmp_path / "objects"), SqlJobQueue(sqlite_db))
    assert ingestor._direct  # noqa: SLF001

    def boom(session, existing, sha, path):  # type: ignore[no-untyped-def]
        audit.record(session, "cli.action", detail={"about": "to fail"})
        raise RuntimeError("constraint violated")

    def item(i: int) -> _Pending:
        apply = ingestor._hl7_apply(Hl7Message(_hl7(i), f"M{i}", "ORU^R01"), None)  # noqa: SLF001
        return _Pending(_hl7(i), apply, True, look_up=False, direct_apply=apply)

    items = ingestor._submit_all(  # noqa: SLF001
        [item(0), item(1), _Pending(b"bad", boom, True, look_up=False, direct_apply=boom), item(2)]
    )
    assert [type(i.error) for i in items] == [type(None)] * 2 + [StorageError] + [type(None)]
    assert count_rows(sqlite_db, SourceObject) == 3 and count_rows(sqlite_db, Job) == 3
    with sqlite_db.session() as s:
        assert audit.verify_session(s).ok
    assert count_rows(sqlite_db, AuditEvent) == 3


def test_sqlite_timestamps_bind_as_the_two_step_processing_would() -> None:
    """``UtcDateTime`` fuses its UTC conversion and SQLite's text format: the text must not change."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.types import TypeDecorator

    from ecgcad.db.models import UtcDateTime

    dialect = sqlite.dialect()
    impl = UtcDateTime().dialect_impl(dialect)
    fused = impl.bind_processor(dialect)
    two_step = TypeDecorator.bind_processor(impl, dialect)
    assert fused is not None and two_step is not None
    values = [
        None,
        dt.datetime(2026, 11, 27, 12, 0, 0),
        dt.datetime(2026, 11, 27, 12, 0, 0, 5, tzinfo=dt.UTC),
        dt.datetime(1999, 1, 2, 3, 4, 5, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2, 1, 1),
    ]
    assert [fused(v) for v in values] == [two_step(v) for v in values]
    assert fused(values[3]) == "1999-01-02 08:04:05.999999"
