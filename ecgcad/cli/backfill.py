"""``ecgcad backfill``: score an archive folder or a PACS; re-running resumes."""

from __future__ import annotations

import json

import typer

from ecgcad.cli._common import ConfigOption, fail, open_context
from ecgcad.errors import EcgcadError


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
    ctx = open_context(config)
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
    """Add ``backfill`` to the ``ecgcad`` app."""
    app.command("backfill")(backfill)
