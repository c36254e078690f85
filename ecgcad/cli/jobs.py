"""Commands for operators: ``worker``, ``scheduler``, ``deliveries …``, ``rescore``, ``selftest``."""

from __future__ import annotations

import json
from typing import Any

import typer

from ecgcad.cli._common import ConfigOption, fail, settings_or_fail
from ecgcad.errors import EcgcadError

deliveries_app = typer.Typer(help="Outbound deliveries (SR, PDF, ORU).", no_args_is_help=True)


def _ctx(config: Any) -> Any:
    from ecgcad.context import AppContext
    from ecgcad.logsetup import configure_logging
    from ecgcad.service import ensure_schema

    settings = settings_or_fail(config)
    configure_logging(settings.log_level)
    try:
        ensure_schema(settings)
    except EcgcadError as exc:
        fail(str(exc))
    return AppContext.from_settings(settings)


def _user() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001
        return "cli"


@deliveries_app.command("list")
def deliveries_list(
    config: ConfigOption = None,
    state: str | None = typer.Option(None, help="pending | sending | retrying | sent | failed"),
    destination: str | None = typer.Option(None, help="Destination name."),
    limit: int = typer.Option(100, help="Rows to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List deliveries (newest first)."""
    from sqlalchemy import select

    from ecgcad.db.models import Delivery

    ctx = _ctx(config)
    with ctx.db.session() as s:
        stmt = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(Delivery.state == state)
        if destination:
            stmt = stmt.where(Delivery.destination == destination)
        rows = [
            {
                "id": d.id,
                "result_id": d.result_id,
                "destination": d.destination,
                "kind": d.object_kind,
                "state": d.state,
                "attempts": d.attempts,
                "last_response": d.last_response,
                "sent_at": d.sent_at.isoformat() if d.sent_at else None,
            }
            for d in s.execute(stmt).scalars()
        ]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "result", "destination", "kind", "state", "attempts", "last response")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["result_id"]),
            r["destination"],
            r["kind"],
            r["state"],
            str(r["attempts"]),
            (r["last_response"] or "")[:60],
        )
    Console().print(table)


@deliveries_app.command("resend")
def deliveries_resend(
    delivery_id: int = typer.Argument(..., help="Delivery id."), config: ConfigOption = None
) -> None:
    """Send a delivery's object again (audited)."""
    from ecgcad.pipeline.actions import resend_delivery

    ctx = _ctx(config)
    try:
        out = resend_delivery(ctx, delivery_id, user=_user(), role="cli")
    except (LookupError, EcgcadError) as exc:
        fail(str(exc).strip("'\""))
    typer.echo(f"delivery {out['delivery_id']} queued for resend (job {out['job_id']})")


def rescore(ecg_id: int = typer.Argument(..., help="ECG id."), config: ConfigOption = None) -> None:
    """Score an ECG again as a new result version, delivered as a correction (audited)."""
    from ecgcad.pipeline.actions import rescore_ecg

    ctx = _ctx(config)
    try:
        out = rescore_ecg(ctx, ecg_id, user=_user())
    except (LookupError, EcgcadError) as exc:
        fail(str(exc).strip("'\""))
    typer.echo(
        f"ECG {ecg_id} queued for rescore as result version {out['result_version']} (job {out['job_id']})"
    )


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


def selftest(config: ConfigOption = None) -> None:
    """Check each destination: C-ECHO for DICOM, an MLLP round trip for HL7."""
    from rich.console import Console
    from rich.table import Table

    from ecgcad.pipeline.selftest import check_destinations

    settings = settings_or_fail(config)
    rows = check_destinations(settings)
    table = Table("destination", "kind", "address", "ok", "answer")
    for r in rows:
        table.add_row(r["name"], r["kind"], r["address"], "yes" if r["ok"] else "NO", r["response"])
    Console().print(table)
    if not all(r["ok"] for r in rows):
        raise typer.Exit(1)


def backfill(
    path: str | None = typer.Argument(None, help="Archive folder to score."),
    config: ConfigOption = None,
    pacs: str | None = typer.Option(
        None, "--pacs", help="Name of a configured PACS source (pacs_sources) instead of a folder."
    ),
    since: str | None = typer.Option(None, help="Only ECGs on or after this date (YYYY-MM-DD)."),
    wait: bool = typer.Option(False, help="Wait until the queue has drained (workers score meanwhile)."),
) -> None:
    """Score an archive folder or a PACS; re-running resumes (what is done is skipped)."""
    import datetime as dt

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ecgcad.pipeline.backfill import backfill_folder, backfill_pacs

    if (path is None) == (pacs is None):
        fail("give either PATH or --pacs NAME")
    try:
        since_date = dt.date.fromisoformat(since) if since else None
    except ValueError:
        fail(f"--since must be a date (YYYY-MM-DD), not {since!r}")
    ctx = _ctx(config)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("backfill", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            if pacs is not None:
                report = backfill_pacs(ctx, pacs, since=since_date, progress=progress)
            else:
                report = backfill_folder(ctx, str(path), since=since_date, progress=progress)
        except (EcgcadError, FileNotFoundError) as exc:
            fail(str(exc))
        if wait:
            import time

            start = ctx.queue.depth()
            drain = bar.add_task("scoring", total=start or None)
            while (depth := ctx.queue.depth()) > 0:
                bar.update(drain, completed=max(start - depth, 0))
                time.sleep(1.0)
            bar.update(drain, completed=start)
    typer.echo(json.dumps(report.as_dict()))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``ecgcad`` app."""
    app.add_typer(deliveries_app, name="deliveries")
    app.command("rescore")(rescore)
    app.command("worker")(worker)
    app.command("scheduler")(scheduler)
    app.command("selftest")(selftest)
    app.command("backfill")(backfill)
