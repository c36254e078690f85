"""`ecgcad audit verify` against a database owner who drops the append-only triggers: removing the last events
or rewriting one and recomputing an unkeyed SHA-256 chain is reported (exit 1), not "intact"."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text
from typer.testing import CliRunner

from ecgcad.cli import app
from ecgcad.config import load_settings
from ecgcad.context import AppContext
from ecgcad.db import audit
from ecgcad.db.migrate import ensure_schema
from ecgcad.db.models import AuditEvent
from ecgcad.db.session import Database

runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "ecgcad.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    return cfg


def _service_events(cfg: Path, n: int) -> str:
    """``n`` audit events written as the service writes them; the database URL."""
    settings = load_settings(cfg)
    ensure_schema(settings)
    ctx = AppContext.from_settings(settings)
    try:
        for i in range(n):
            with ctx.db.session() as s:
                audit.record(s, "api.read", user=f"user-{i}", role="viewer", patient_id=f"P{i}")
    finally:
        ctx.close()
    # `ecgcad migrate` (as before an upgrade) writes the checkpoint the attacker cannot rewrite.
    migrated = runner.invoke(app, ["migrate", "--config", str(cfg)])
    assert migrated.exit_code == 0, migrated.output
    intact = runner.invoke(app, ["audit", "verify", "--config", str(cfg)])
    assert intact.exit_code == 0 and "intact" in intact.stdout, intact.output
    return settings.effective_database_url


def _drop_guards(url: str) -> Database:
    db = Database(url)  # the attacker's own connection: no audit key
    with db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_no_update"))
        conn.execute(text("DROP TRIGGER audit_events_no_delete"))
    return db


def test_deleting_the_last_events_fails_audit_verify(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    db = _drop_guards(_service_events(cfg, 8))
    try:
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_events WHERE id > (SELECT max(id) - 3 FROM audit_events)"))
    finally:
        db.dispose()
    result = runner.invoke(app, ["audit", "verify", "--config", str(cfg)])
    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output and "removed from the end" in result.output


@pytest.mark.parametrize("from_start", [True, False], ids=["whole-chain", "from-the-rewritten-event"])
def test_rewriting_an_event_and_recomputing_the_unkeyed_chain_fails_audit_verify(
    tmp_path: Path, from_start: bool
) -> None:
    cfg = _config(tmp_path)
    db = _drop_guards(_service_events(cfg, 8))
    try:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET \"user\" = 'mallory' WHERE id = 3"))
        prev = audit.GENESIS
        with db.session() as s:
            events = list(s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())
            for event in events:
                if from_start or event.id >= 3:
                    # What anyone can compute: SHA-256 over the previous hash and the canonical JSON.
                    event.prev_hash = prev
                    event.hash = audit.event_hash(prev, event)
                    if hasattr(event, "key_id"):
                        event.key_id = None  # and claim the events were written before keys existed
                prev = event.hash
    finally:
        db.dispose()
    result = runner.invoke(app, ["audit", "verify", "--config", str(cfg)])
    assert result.exit_code == 1, result.output
    assert "BROKEN" in result.output
    if from_start:  # a consistent chain on its own: only the signed checkpoint shows the rewrite
        assert "not the head of the checkpoint" in result.output
    else:
        assert "BROKEN at event 3" in result.output and "unkeyed event after keyed" in result.output
