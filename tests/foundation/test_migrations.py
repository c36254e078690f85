"""Migrations bring an empty SQLite and an empty PostgreSQL to head, and the models match the schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from ecgcad.db.migrate import current_revision, head_revision, upgrade
from ecgcad.db.models import AuditEvent, Base
from ecgcad.db.session import Database


def test_empty_database_upgrades_to_head_and_models_match_schema(database_url: str) -> None:
    upgrade(database_url)
    db = Database(database_url)
    try:
        assert current_revision(db.engine) == head_revision()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrated schema differ: {diff}"
    finally:
        db.dispose()


def test_upgrade_twice_is_harmless(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_db: Database) -> None:
    with sqlite_db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert int(conn.execute(text("PRAGMA busy_timeout")).scalar()) >= 1000


def test_audit_table_refuses_update_and_delete(db: Database) -> None:
    from ecgcad.db import audit

    with db.session() as s:
        audit.record(s, "application.start", detail={"x": 1})
    with pytest.raises(Exception, match="append-only"):
        with db.session() as s:
            s.execute(text("UPDATE audit_events SET outcome = 4"))
    with pytest.raises(Exception, match="append-only"):
        with db.session() as s:
            s.execute(text("DELETE FROM audit_events"))
    with db.session() as s:
        assert s.query(AuditEvent).count() == 1


def test_a_long_read_session_does_not_block_writers(sqlite_db: Database) -> None:
    import threading

    from ecgcad.db import audit

    done = threading.Event()

    def write() -> None:
        with sqlite_db.session() as s:
            audit.record(s, "application.start")
        done.set()

    with sqlite_db.read_session() as reader:
        reader.execute(text("SELECT count(*) FROM audit_events")).scalar()
        t = threading.Thread(target=write)
        t.start()
        assert done.wait(5), "a writer waited for a reader"
    t.join(5)
