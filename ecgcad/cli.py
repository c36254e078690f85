"""The ``ecgcad`` command (typer); ``python -m ecgcad`` runs it too.

Foundation commands live here (``serve``, ``migrate``, ``config show``, ``version``). Each area adds its
commands from its own module through a ``register(app)`` function listed in :data:`COMMAND_MODULES`, so that
heavy imports (torch) happen only when such a command runs.
"""

from __future__ import annotations

import importlib
import json
import logging

import typer

from ecgcad import __version__
from ecgcad.clitools import ConfigOption, fail, settings_or_fail
from ecgcad.config import Settings
from ecgcad.errors import EcgcadError

app = typer.Typer(
    name="ecgcad",
    help="ECG coronary stenosis risk scoring service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")

#: Modules that add commands with ``register(app)``; a module that does not exist yet is skipped.
COMMAND_MODULES = (
    "ecgcad.integration.cli",  # inspect
    "ecgcad.model.cli",  # score, model …, train, evaluate, thresholds, dataset
    "ecgcad.jobs.cli",  # worker, scheduler, backfill, deliveries, rescore, selftest
    "ecgcad.api.cli",  # token …, audit …
)

logger = logging.getLogger(__name__)


@app.command()
def version(config: ConfigOption = None) -> None:
    """Print the ecgcad version."""
    typer.echo(f"ecgcad {__version__}")


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    settings = settings_or_fail(config)
    typer.echo(json.dumps(settings.masked_dict(), indent=2, default=str))


@app.command()
def migrate(
    config: ConfigOption = None, revision: str = typer.Option("head", help="Target revision.")
) -> None:
    """Upgrade the database schema to ``revision`` (default: head), then write an audit checkpoint.

    The data folder is made private first (umask 0077, folder 0700). The checkpoint is written only when the
    audit chain still matches the previous one; otherwise the problem is printed (the migration stands) and
    ``ecgcad audit verify`` tells more.
    """
    from ecgcad.db.datadir import prepare_data_dir
    from ecgcad.db.migrate import upgrade
    from ecgcad.logsetup import configure_logging

    settings = settings_or_fail(config)
    configure_logging(settings.log_level)
    try:
        prepare_data_dir(settings.data_dir)
        upgrade(settings, revision)
        if not settings.is_embedded and settings.queue.engine in ("auto", "procrastinate"):
            from ecgcad.db.session import make_engine
            from ecgcad.jobs.procrastinate_store import PostgresStore

            engine = make_engine(settings.effective_database_url)
            try:
                if PostgresStore(engine).install_schema():
                    typer.echo("procrastinate queue schema installed")
            finally:
                engine.dispose()
    except EcgcadError as exc:
        fail(str(exc))
    typer.echo(f"database at {revision}")
    if revision == "head":
        _checkpoint_after_migrate(settings)


def _checkpoint_after_migrate(settings: Settings) -> None:
    from ecgcad.db.audit_checkpoint import take_checkpoint
    from ecgcad.db.session import Database

    try:
        db = Database.from_settings(settings)
    except EcgcadError as exc:
        fail(str(exc))
    try:
        checkpoint = take_checkpoint(db, settings.audit_checkpoint_file)
    except EcgcadError as exc:
        typer.echo(f"no audit checkpoint written: {exc}", err=True)
        return
    finally:
        db.dispose()
    typer.echo(f"audit checkpoint: {checkpoint.count} events")


@app.command()
def serve(
    config: ConfigOption = None,
    role: str = typer.Option("all", help="Comma-separated roles: listeners, api, worker, scheduler, all."),
    dicom_port: int | None = typer.Option(None, help="Override [dicom] port."),
    hl7_port: int | None = typer.Option(None, help="Override [hl7] port."),
    api_port: int | None = typer.Option(None, help="Override [api] port."),
    data_dir: str | None = typer.Option(None, help="Override data_dir."),
) -> None:
    """Run the service: listeners, worker, scheduler and API (embedded mode by default)."""
    from ecgcad.logsetup import configure_logging
    from ecgcad.service import Service

    overrides: dict[str, object] = {}
    if dicom_port is not None:
        overrides["dicom"] = {"port": dicom_port}
    if hl7_port is not None:
        overrides["hl7"] = {"port": hl7_port}
    if api_port is not None:
        overrides["api"] = {"port": api_port}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    settings = settings_or_fail(config, **overrides)
    configure_logging(settings.log_level)
    roles = {r.strip() for r in role.split(",") if r.strip()}
    try:
        Service(settings, roles=roles).run_forever()
    except EcgcadError as exc:
        fail(str(exc))


def _register_plugins() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


_register_plugins()


def main() -> None:
    """Console entry point."""
    app()
