"""Shared pieces of the ``ecgcad`` command line: the ``--config`` option and one-line failures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ecgcad.config import Settings, load_settings
from ecgcad.errors import EcgcadError

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (default: $ECGCAD_CONFIG).", envvar=None),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings_or_fail(config: Path | None, **overrides: Any) -> Settings:
    """Load settings or exit with one line naming the bad key."""
    try:
        return load_settings(config, **overrides)
    except EcgcadError as exc:
        fail(str(exc))
