"""The data folder holds PHI: after `ecgcad migrate` or a service start it is 0700 and every file in it 0600
(database, WAL, objects, audit key and checkpoint), whatever the umask the service was started with, and wider
modes that were there before are named in a warning at start."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgcad.cli import app
from ecgcad.config import load_settings
from ecgcad.db.migrate import ensure_schema, upgrade
from ecgcad.service import Service

runner = CliRunner()


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Start as a shell usually does (umask 022); the service must not rely on the caller's umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _too_open(root: Path) -> list[str]:
    """Every entry under ``root`` (itself included) that group or others may access."""
    out = [f"{root} {_mode(root):04o}"] if _mode(root) & 0o077 else []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if _mode(path) & 0o077:
                out.append(f"{path} {_mode(path):04o}")
    return out


def test_migrate_creates_a_private_data_dir_and_private_files(tmp_path: Path, loose_umask: None) -> None:
    data = tmp_path / "var"
    cfg = tmp_path / "ecgcad.toml"
    cfg.write_text(f'data_dir = "{data}"\n')
    result = runner.invoke(app, ["migrate", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert _mode(data) == 0o700
    assert _mode(data / "ecgcad.db") == 0o600
    assert _mode(data / "audit.key") == 0o600 and _mode(data / "audit-checkpoint.json") == 0o600
    assert _too_open(data) == []


def test_a_started_service_keeps_every_file_private(tmp_path: Path, loose_umask: None) -> None:
    settings = load_settings(None, data_dir=str(tmp_path / "var"), api={"enabled": False})
    service = Service(settings, roles={"scheduler"})
    ctx = service.start()
    try:
        _, object_path = ctx.store.put(b"an ECG object")
        data = settings.data_dir
        assert _mode(data) == 0o700 and _mode(data / "objects") == 0o700
        assert (data / "ecgcad.db-wal").exists(), "the database is open in WAL mode"
        for path in (data / "ecgcad.db", data / "ecgcad.db-wal", data / "ecgcad.db-shm", object_path):
            assert _mode(path) == 0o600, path
        checkpoint = data / "audit-checkpoint.json"  # written by the scheduler role's first run
        deadline = time.monotonic() + 20
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _mode(data / "audit.key") == 0o600 and _mode(checkpoint) == 0o600
        assert _too_open(data) == []
    finally:
        service.stop()


def test_wider_existing_modes_are_warned_about_at_start(
    tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    upgrade(f"sqlite:///{data / 'ecgcad.db'}")
    os.chmod(data / "ecgcad.db", 0o644)
    settings = load_settings(None, data_dir=str(data))
    with caplog.at_level(logging.WARNING):
        ensure_schema(settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"{data / 'ecgcad.db'} (0644)" in w and f"{data} (0755)" in w for w in warnings), warnings
    assert _mode(data / "ecgcad.db") == 0o644, "modes set by an administrator are reported, not changed"
