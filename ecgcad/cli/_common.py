"""What every ``ecgcad`` command shares: the ``--config`` option, errors → exit codes, the acting user, and
opening the database or the application context.

Exit codes: 0 success, 1 a check found a problem (``audit verify``, ``selftest``), 2 bad input or a failure
the user can act on (one line on stderr, never a traceback).
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from ecgcad.config import Settings, load_settings
from ecgcad.errors import EcgcadError

if TYPE_CHECKING:
    from ecgcad.context import AppContext
    from ecgcad.db.session import Database

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (default: $ECGCAD_CONFIG).", envvar=None),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings_or_fail(config: Path | None, **overrides: object) -> Settings:
    """Load settings or exit with one line naming the bad key."""
    try:
        return load_settings(config, **overrides)
    except EcgcadError as exc:
        fail(str(exc))


def acting_user() -> str:
    """The user recorded in audit events for a command-line action: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "cli"


def open_database(config: Path | None) -> Database:
    """The database of ``config`` with its schema at head (embedded: migrated now), or exit 2."""
    from ecgcad.db.migrate import ensure_schema
    from ecgcad.db.session import Database

    settings = settings_or_fail(config)
    try:
        ensure_schema(settings)
    except EcgcadError as exc:
        fail(str(exc))
    return Database.from_settings(settings)


def open_context(config: Path | None) -> AppContext:
    """The application context of ``config`` (logging configured, schema at head), or exit 2."""
    from ecgcad.context import AppContext
    from ecgcad.db.migrate import ensure_schema
    from ecgcad.logsetup import configure_logging

    settings = settings_or_fail(config)
    configure_logging(settings.log_level)
    try:
        ensure_schema(settings)
    except EcgcadError as exc:
        fail(str(exc))
    return AppContext.from_settings(settings)
