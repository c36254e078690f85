"""Run Alembic migrations programmatically (``ecgcad migrate``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ecgcad.errors import StorageError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ecgcad.config import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(settings_or_url: Settings | str, revision: str = "head") -> None:
    """Upgrade the database to ``revision``.

    Raises
    ------
    StorageError
        The database cannot be reached or a migration failed.
    """
    url = settings_or_url if isinstance(settings_or_url, str) else settings_or_url.effective_database_url
    try:
        command.upgrade(alembic_config(url), revision)
    except Exception as exc:  # noqa: BLE001 - translated at this boundary
        raise StorageError(f"migration failed: {exc}") from exc


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision in the package."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def ensure_schema(settings: Settings) -> None:
    """Embedded mode migrates on start; on PostgreSQL the schema must already be at head (``ecgcad migrate``).

    First the data folder is made private (umask ``0077``, the folder ``0700``; wider existing modes are
    warned about: :func:`ecgcad.db.datadir.prepare_data_dir`), before the database file is created in it.
    """
    from ecgcad.db.datadir import prepare_data_dir
    from ecgcad.db.session import make_engine

    prepare_data_dir(settings.data_dir, extra=_outside_data_dir(settings))
    if settings.is_embedded:
        upgrade(settings)
        return
    engine = make_engine(settings.effective_database_url)
    try:
        current = current_revision(engine)
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"database unreachable: {exc}") from exc
    finally:
        engine.dispose()
    if current != head_revision():
        raise StorageError(
            f"database schema is at {current}, expected {head_revision()}: run `ecgcad migrate`"
        )


def _outside_data_dir(settings: Settings) -> tuple[Path, ...]:
    """The audit key and checkpoint files when configured outside the data folder."""
    paths = (settings.audit_key_file, settings.audit_checkpoint_file)
    return tuple(p for p in paths if p.parent.resolve() != settings.data_dir.resolve())
