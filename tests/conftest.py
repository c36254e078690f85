"""Shared fixtures: databases (SQLite and a real PostgreSQL on loopback), settings, a migrated service DB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecgcad.db.migrate import upgrade
from ecgcad.db.session import Database

_PG_ERROR: str | None = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A PostgreSQL server for the whole session, or a visible skip when none can be started."""
    global _PG_ERROR
    if os.environ.get("ECGCAD_TEST_NO_POSTGRES"):
        pytest.skip("PostgreSQL tests disabled by ECGCAD_TEST_NO_POSTGRES")
    if _PG_ERROR:
        pytest.skip(f"no PostgreSQL server could be started: {_PG_ERROR}")
    from tests.pg import PostgresServer

    try:
        server = PostgresServer()
    except Exception as exc:  # noqa: BLE001
        _PG_ERROR = f"{type(exc).__name__}: {exc}"
        pytest.skip(f"no PostgreSQL server could be started: {_PG_ERROR}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ecgcad.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database()  # type: ignore[attr-defined]


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database on each engine."""
    upgrade(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A migrated embedded (SQLite) database only."""
    url = f"sqlite:///{tmp_path / 'ecgcad.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()
