"""The session factory: one write session per thread and database; a nested one is refused at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from ecgcad.db.models import KvState, utcnow
from ecgcad.db.session import Database
from ecgcad.errors import EcgcadError, NestedWriteError


@pytest.fixture
def checkouts(db: Database) -> Iterator[list[int]]:
    """How many pooled connections were checked out (one entry per checkout)."""
    seen: list[int] = []

    def on_checkout(*_: Any) -> None:
        seen.append(1)

    event.listen(db.engine, "checkout", on_checkout)
    yield seen
    event.remove(db.engine, "checkout", on_checkout)


def _put(session: Any, key: str) -> None:
    session.add(KvState(key=key, value={"v": 1}, updated_at=utcnow()))


def _keys(db: Database) -> list[str]:
    with db.read_session() as s:
        return list(
            s.execute(select(KvState.key).where(KvState.key.like("t.%")).order_by(KvState.key)).scalars()
        )


def test_a_nested_write_session_is_refused_before_it_takes_a_connection(
    db: Database, checkouts: list[int]
) -> None:
    with db.session() as outer:
        _put(outer, "t.outer")
        before = len(checkouts)
        with pytest.raises(NestedWriteError, match="inside another write session"), db.session():
            pytest.fail("the nested write session was opened")  # pragma: no cover
        # Refused before any lock or BEGIN: no second connection was even checked out.
        assert len(checkouts) == before
    assert issubclass(NestedWriteError, EcgcadError)
    # The outer session was not disturbed, and the thread may write again once it has ended.
    with db.session() as again:
        _put(again, "t.after")
    assert _keys(db) == ["t.after", "t.outer"]


def test_a_write_session_that_failed_does_not_leave_the_thread_marked(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session() as s:
        _put(s, "t.rolled-back")
        raise RuntimeError("boom")
    with db.session() as s:
        _put(s, "t.next")
    assert _keys(db) == ["t.next"]


def test_reads_nest_in_writes_and_writes_in_reads(db: Database) -> None:
    with db.session() as w, db.read_session() as r:
        _put(w, "t.a")
        assert r.execute(select(KvState.key).where(KvState.key == "t.a")).first() is None
    with db.read_session() as r, db.session() as w:
        _put(w, "t.b")
    assert _keys(db) == ["t.a", "t.b"]


def test_direct_transactions_and_sessions_do_not_nest_either_way(sqlite_db: Database) -> None:
    with sqlite_db.session(), pytest.raises(NestedWriteError), sqlite_db.direct_transaction():
        pytest.fail("a direct transaction opened inside a write session")  # pragma: no cover
    with sqlite_db.direct_transaction(), pytest.raises(NestedWriteError), sqlite_db.session():
        pytest.fail("a write session opened inside a direct transaction")  # pragma: no cover
    with sqlite_db.direct_transaction(), pytest.raises(NestedWriteError), sqlite_db.direct_transaction():
        pytest.fail("a direct transaction opened inside another")  # pragma: no cover
    with sqlite_db.direct_transaction() as tx:
        tx.dbapi_connection.execute(
            "INSERT INTO kv_state (key, value, updated_at) VALUES ('t.direct', '{}', '2024-01-01 00:00:00')"
        )
    assert _keys(sqlite_db) == ["t.direct"]


def test_a_writer_of_another_thread_waits_for_the_lock_instead_of_being_refused(db: Database) -> None:
    errors: list[BaseException] = []

    def other_writer() -> None:
        try:
            with db.session() as s:
                _put(s, "t.other")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            errors.append(exc)

    thread = threading.Thread(target=other_writer)
    with db.session() as s:
        _put(s, "t.first")
        thread.start()
        # A refusal would come at once; a waiting writer (SQLite) is still waiting after this.
        thread.join(0.5)
        assert errors == []
    thread.join(60)
    assert not thread.is_alive() and errors == []
    assert _keys(db) == ["t.first", "t.other"]


def test_two_databases_each_take_one_writer_per_thread(db: Database, tmp_path: Any) -> None:
    from ecgcad.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(url)
    other = Database(url)
    try:
        with db.session() as a, other.session() as b:
            _put(a, "t.here")
            _put(b, "t.there")
        assert _keys(db) == ["t.here"] and _keys(other) == ["t.there"]
    finally:
        other.dispose()
