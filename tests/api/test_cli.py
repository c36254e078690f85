"""`ecgcad token create/revoke/list` and `ecgcad audit query/verify`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sqlalchemy import text
from typer.testing import CliRunner

from ecgcad.cli import app
from ecgcad.config import Settings
from ecgcad.context import AppContext
from tests.api.conftest import TestClient, bearer

runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "ecgcad.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    return cfg


def test_token_lifecycle_and_audit_commands(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    created = runner.invoke(app, ["token", "create", "nina", "--role", "operator", "--config", str(cfg)])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("ecgcad_") and len(token) > 40

    duplicate = runner.invoke(app, ["token", "create", "nina", "--role", "viewer", "--config", str(cfg)])
    assert duplicate.exit_code == 2 and "exists already" in duplicate.output
    bad_role = runner.invoke(app, ["token", "create", "x", "--role", "root", "--config", str(cfg)])
    assert bad_role.exit_code == 2 and "unknown role" in bad_role.output

    ctx = AppContext.from_settings(Settings(data_dir=tmp_path / "var"))
    try:
        from ecgcad.api.app import create_app

        with TestClient(create_app(ctx)) as c:
            assert c.get("/api/v1/jobs", headers=bearer(token)).status_code == 200
            listed = runner.invoke(app, ["token", "list", "--config", str(cfg)])
            assert "nina\toperator" in listed.stdout and token not in listed.stdout
            assert runner.invoke(app, ["token", "revoke", "nina", "--config", str(cfg)]).exit_code == 0
            assert c.get("/api/v1/jobs", headers=bearer(token)).status_code == 401
    finally:
        ctx.close()

    as_json = runner.invoke(
        app, ["audit", "query", "--event", "token.created", "--format", "json", "--config", str(cfg)]
    )
    assert as_json.exit_code == 0, as_json.output
    events = json.loads(as_json.stdout)
    assert [e["detail"]["token"] for e in events] == ["nina"]
    as_csv = runner.invoke(app, ["audit", "query", "--user", "nina", "--format", "csv", "--config", str(cfg)])
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["event_type"] for r in rows} == {"api.query"}
    table = runner.invoke(app, ["audit", "query", "--event", "110101", "--config", str(cfg)])
    assert table.exit_code == 0 and table.stdout.count("audit.read") == 2  # the two queries above
    assert runner.invoke(app, ["audit", "query", "--since", "soon", "--config", str(cfg)]).exit_code == 2

    unchecked = runner.invoke(app, ["audit", "verify", "--config", str(cfg)])
    assert unchecked.exit_code == 1 and "no audit checkpoint" in unchecked.output
    checkpoint = runner.invoke(app, ["audit", "checkpoint", "--config", str(cfg)])
    assert checkpoint.exit_code == 0 and "audit checkpoint written" in checkpoint.stdout
    verified = runner.invoke(app, ["audit", "verify", "--config", str(cfg)])
    assert verified.exit_code == 0 and "intact" in verified.stdout

    ctx = AppContext.from_settings(Settings(data_dir=tmp_path / "var"))
    try:
        with ctx.db.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
            conn.execute(text("UPDATE audit_events SET outcome = 12 WHERE id = 2"))
    finally:
        ctx.close()
    broken = runner.invoke(app, ["audit", "verify", "--config", str(cfg)])
    assert broken.exit_code == 1 and "BROKEN at event 2" in broken.output
