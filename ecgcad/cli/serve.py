"""Running and setting up: ``ecgcad serve | worker | scheduler | migrate | version | config show``."""

from __future__ import annotations

import json
from typing import Any

import typer

from ecgcad import __version__
from ecgcad.cli._common import ConfigOption, fail, settings_or_fail
from ecgcad.config import Settings
from ecgcad.errors import EcgcadError

config_app = typer.Typer(help="Settings.", no_args_is_help=True)


def version(config: ConfigOption = None) -> None:
    """Print the ecgcad version."""
    typer.echo(f"ecgcad {__version__}")


def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    settings = settings_or_fail(config)
    typer.echo(json.dumps(settings.masked_dict(), indent=2, default=str))


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


def worker(
    config: ConfigOption = None,
    device: str | None = typer.Option(None, help="Model device (cpu, cuda, cuda:N)."),
    concurrency: int = typer.Option(1, help="Worker processes (one per GPU)."),
) -> None:
    """Run queue workers only (scale-out)."""
    from ecgcad.logsetup import configure_logging
    from ecgcad.service import Service

    overrides: dict[str, Any] = {}
    if device:
        overrides["model"] = {"device": device}
    settings = settings_or_fail(config, **overrides)
    configure_logging(settings.log_level)
    if concurrency > 1:
        import multiprocessing as mp

        mpctx = mp.get_context("spawn")  # CUDA initialises cleanly only in spawned processes
        procs = [
            mpctx.Process(target=_run_worker_process, args=(settings.transport_dict(),))
            for _ in range(concurrency)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return
    Service(settings, roles={"worker"}).run_forever()


def _run_worker_process(settings_data: dict[str, Any]) -> None:
    from ecgcad.config import load_settings
    from ecgcad.logsetup import configure_logging
    from ecgcad.service import Service

    settings = load_settings(None, **settings_data)
    configure_logging(settings.log_level)
    Service(settings, roles={"worker"}).run_forever()


def scheduler(config: ConfigOption = None) -> None:
    """Run the scheduler only (a second one is harmless)."""
    from ecgcad.logsetup import configure_logging
    from ecgcad.service import Service

    settings = settings_or_fail(config)
    configure_logging(settings.log_level)
    Service(settings, roles={"scheduler"}).run_forever()


def register(app: typer.Typer) -> None:
    """Add the running and set-up commands to the ``ecgcad`` app."""
    app.command("version")(version)
    app.add_typer(config_app, name="config")
    config_app.command("show")(config_show)
    app.command("migrate")(migrate)
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.command("scheduler")(scheduler)
