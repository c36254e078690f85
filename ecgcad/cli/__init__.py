"""The ``ecgcad`` command (typer); ``python -m ecgcad`` runs it too.

Every command lives in this package, one module per command group; the packages below never import it
(pynetdicom's ``apps/``, procrastinate's ``cli.py``). Each module adds its commands with ``register(app)``
and imports heavy libraries (torch) inside the commands, so that ``ecgcad version`` stays fast.
"""

from __future__ import annotations

import typer

from ecgcad.cli import admin, backfill, deliveries, formats, model, serve, training

app = typer.Typer(
    name="ecgcad",
    help="ECG coronary stenosis risk scoring service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: The command modules, in the order their commands are listed by ``ecgcad --help``.
COMMAND_MODULES = (serve, formats, model, training, deliveries, backfill, admin)

for _module in COMMAND_MODULES:
    _module.register(app)


def main() -> None:
    """Console entry point."""
    app()
