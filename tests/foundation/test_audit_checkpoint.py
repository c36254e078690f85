"""The keyed audit chain and its signed checkpoints, on SQLite and PostgreSQL: keyed events verify only with
their key, events from before keys existed still verify, and truncation, rewriting with a recomputed chain
and a missing, forged or foreign checkpoint are all reported; a checkpoint never blesses a tampered chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from ecgcad.config import load_settings
from ecgcad.db import audit
from ecgcad.db.audit_checkpoint import (
    Checkpoint,
    read_checkpoint,
    take_checkpoint,
    verify_database,
    write_checkpoint,
)
from ecgcad.db.audit_key import AuditKey, read_key_file
from ecgcad.db.migrate import upgrade
from ecgcad.db.models import AuditEvent
from ecgcad.db.session import Database
from ecgcad.errors import AuditIntegrityError, ConfigurationError

KEY = AuditKey("k" * 40)
OTHER_KEY = AuditKey("o" * 40)


@pytest.fixture
def keyed_db(database_url: str) -> Iterator[Database]:
    """A migrated database on each engine, written with :data:`KEY`."""
    upgrade(database_url)
    database = Database(database_url, audit_key=KEY)
    yield database
    database.dispose()


def _record(db: Database, n: int, user: str = "u") -> None:
    for i in range(n):
        with db.session() as s:
            audit.record(s, "api.read", user=f"{user}{i}", role="viewer", patient_id=f"P{i}")


def _drop_guards(db: Database) -> None:
    with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_change"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
            conn.execute(text("DROP TRIGGER audit_events_no_delete"))


@pytest.mark.parametrize("secret", ["a" * 32, "b" * 64, "c" * 65, "ü" * 80])
def test_the_audit_mac_is_rfc_2104_hmac_sha256(secret: str) -> None:
    message = b"0" * 64 + b'{"event_type":"api.read"}'
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    assert AuditKey(secret).mac(message) == expected


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="at least 32"):
        AuditKey("short")
    (tmp_path / "audit.key").write_text("short\n")
    with pytest.raises(ConfigurationError, match="audit.key"):
        read_key_file(tmp_path / "audit.key")
    with pytest.raises(ConfigurationError, match="at least 32"):
        load_settings(None, audit={"key": "short"})


def test_the_key_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "var" / "audit.key"
    first = read_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(path).key_id == first.key_id
    assert read_key_file(tmp_path / "other.key").key_id != first.key_id
    with pytest.raises(ConfigurationError, match="does not exist"):
        read_key_file(tmp_path / "missing.key", create=False)


def test_keyed_events_name_their_key_and_verify_only_with_it(keyed_db: Database) -> None:
    _record(keyed_db, 3)
    with keyed_db.session() as s:
        assert audit.verify_session(s).ok
        events = list(s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())
    assert {e.key_id for e in events} == {KEY.key_id}
    assert events[0].hash == KEY.mac(audit.GENESIS.encode() + audit._canonical(events[0]))  # noqa: SLF001
    report = audit.verify_chain(events, OTHER_KEY)
    assert not report.ok and report.first_broken_id == events[0].id and "audit key" in (report.reason or "")
    assert not audit.verify_chain(events, None).ok


def test_truncation_after_a_checkpoint_is_detected(keyed_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    _record(keyed_db, 6)
    written = take_checkpoint(keyed_db, path)
    assert written.count == 6 and written.keyed
    assert path.stat().st_mode & 0o777 == 0o600
    report, used = verify_database(keyed_db, path)
    assert report.ok and used == written
    _drop_guards(keyed_db)
    with keyed_db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE id > :id"), {"id": written.last_id - 2})
    report, _ = verify_database(keyed_db, path)
    assert not report.ok and report.checked == 4 and "removed from the end" in (report.reason or "")
    with pytest.raises(AuditIntegrityError, match="is gone"):
        take_checkpoint(keyed_db, path)
    assert read_checkpoint(path) == written, "the checkpoint of the intact chain is kept"
    # New events after the cut do not hide it: the checkpoint's head is still missing.
    _record(keyed_db, 4, user="later")
    report, _ = verify_database(keyed_db, path)
    assert not report.ok and "not the head of the checkpoint" in (report.reason or "")


def test_a_chain_recomputed_without_the_key_is_detected(keyed_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    _record(keyed_db, 5)
    take_checkpoint(keyed_db, path)
    _drop_guards(keyed_db)
    attacker = Database(keyed_db.url)
    try:
        with attacker.session() as s:
            prev = audit.GENESIS
            for event in s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars():
                if event.user == "u2":
                    event.user = "mallory"
                event.prev_hash, event.key_id = prev, None
                event.hash = prev = audit.event_hash(prev, event)
    finally:
        attacker.dispose()
    with keyed_db.session() as s:
        assert audit.verify_session(s).ok, "a consistent unkeyed chain, on its own, looks like an old one"
    report, _ = verify_database(keyed_db, path)
    assert not report.ok and "not the head of the checkpoint" in (report.reason or "")
    with pytest.raises(AuditIntegrityError, match="no longer has the hash"):
        take_checkpoint(keyed_db, path)


def test_a_missing_forged_or_foreign_checkpoint_fails_verify(sqlite_db: Database, tmp_path: Path) -> None:
    db = Database(sqlite_db.url, audit_key=KEY)
    path = tmp_path / "checkpoint.json"
    try:
        _record(db, 3)
        report, _ = verify_database(db, path)
        assert not report.ok and "no audit checkpoint" in (report.reason or "")
        good = take_checkpoint(db, path)
        forged = Checkpoint(**{**_fields(good), "count": 2, "last_id": good.last_id - 1})
        write_checkpoint(path, forged)
        report, _ = verify_database(db, path)
        assert not report.ok and "not signed with the audit key" in (report.reason or "")
        with pytest.raises(AuditIntegrityError, match="not signed"):
            take_checkpoint(db, path)
        foreign = Checkpoint.sign(OTHER_KEY, audit.ChainReport(True, 3, head=good.head, last_id=good.last_id))
        write_checkpoint(path, foreign)
        assert "not signed with the audit key" in (verify_database(db, path)[0].reason or "")
        path.write_text('{"version": 1, "count": "many"}')
        assert "is invalid" in (verify_database(db, path)[0].reason or "")
    finally:
        db.dispose()


def _fields(checkpoint: Checkpoint) -> dict[str, object]:
    import dataclasses

    return dataclasses.asdict(checkpoint)


def test_checkpoint_fields_are_validated() -> None:
    good = Checkpoint.sign(KEY, audit.ChainReport(True, 0))
    assert good.count == 0 and good.head == audit.GENESIS and good.verify_signature(KEY)
    assert Checkpoint.from_json(good.to_json()) == good
    for bad in (
        {"count": -1},
        {"head": "xyz"},
        {"count": 2, "last_id": 1},
        {"key_id": "K"},
        {"written_at": "x"},
    ):
        with pytest.raises(ValueError):
            Checkpoint(**{**_fields(good), **bad})
    with pytest.raises(ValueError, match="intact"):
        Checkpoint.sign(KEY, audit.ChainReport(False, 1))


def test_events_from_before_the_key_still_verify_and_the_chain_goes_on(tmp_path: Path) -> None:
    """A database written at revision 0003 (unkeyed SHA-256) is upgraded; keyed events follow its chain."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    table = AuditEvent.__table__
    prev = audit.GENESIS
    db = Database(url)
    with db.engine.begin() as conn:
        for i in range(3):
            values = {name: None for name in audit._HASHED_FIELDS}  # noqa: SLF001
            values.update(
                event_id="110110",
                event_type="api.read",
                action="R",
                outcome=0,
                occurred_at=dt.datetime(2026, 1, 1, 12, i, tzinfo=dt.UTC),
                user=f"old{i}",
            )
            values["prev_hash"], values["hash"] = prev, audit.event_hash(prev, values)
            prev = values["hash"]
            conn.execute(table.insert().values(**values))  # type: ignore[attr-defined]
    db.dispose()
    upgrade(url)
    db = Database(url, audit_key=KEY)
    path = tmp_path / "checkpoint.json"
    try:
        _record(db, 2, user="new")
        with db.session() as s:
            report = audit.verify_session(s)
            keys = s.execute(select(AuditEvent.key_id).order_by(AuditEvent.id)).scalars().all()
        assert report.ok and report.checked == 5 and report.keyed
        assert keys == [None, None, None, KEY.key_id, KEY.key_id]
        assert take_checkpoint(db, path).count == 5
        # An unkeyed event after keyed ones is a downgrade, not an old event.
        unkeyed = Database(url)
        _record(unkeyed, 1, user="nokey")
        unkeyed.dispose()
        report, _ = verify_database(db, path)
        assert not report.ok and "unkeyed event after keyed" in (report.reason or "")
    finally:
        db.dispose()


def test_the_scheduler_role_checkpoints_at_start_and_after_its_last_event(tmp_path: Path) -> None:
    from ecgcad.service import Service

    settings = load_settings(None, data_dir=str(tmp_path / "var"), api={"enabled": False})
    service = Service(settings, roles={"scheduler"})
    ctx = service.start()
    try:
        path = settings.audit_checkpoint_file
        deadline = time.monotonic() + 20
        while read_checkpoint(path) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_checkpoint(path) is not None, "no checkpoint at start"
        db = Database(ctx.settings.effective_database_url)
    finally:
        service.stop()
    try:
        with db.session() as s:
            last = s.execute(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
    finally:
        db.dispose()
    final = read_checkpoint(path)
    assert last.event_type == "application.stop"
    assert final is not None and (final.last_id, final.head) == (last.id, last.hash)
