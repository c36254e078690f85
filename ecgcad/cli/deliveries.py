"""``ecgcad deliveries list | resend``, ``ecgcad rescore`` and ``ecgcad selftest``: operators' commands on outbound results."""

from __future__ import annotations

import json
from typing import Any

import typer

from ecgcad.cli._common import ConfigOption, acting_user, fail, open_context, settings_or_fail
from ecgcad.errors import EcgcadError

deliveries_app = typer.Typer(help="Outbound deliveries (SR, PDF, ORU).", no_args_is_help=True)


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

    ctx = open_context(config)
    with ctx.db.session() as s:
        stmt = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(Delivery.state == state)
        if destination:
            stmt = stmt.where(Delivery.destination == destination)
        rows: list[dict[str, Any]] = [
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

    ctx = open_context(config)
    try:
        out = resend_delivery(ctx, delivery_id, user=acting_user(), role="cli")
    except (LookupError, EcgcadError) as exc:
        fail(str(exc).strip("'\""))
    typer.echo(f"delivery {out['delivery_id']} queued for resend (job {out['job_id']})")


def rescore(ecg_id: int = typer.Argument(..., help="ECG id."), config: ConfigOption = None) -> None:
    """Score an ECG again as a new result version, delivered as a correction (audited)."""
    from ecgcad.pipeline.actions import rescore_ecg

    ctx = open_context(config)
    try:
        out = rescore_ecg(ctx, ecg_id, user=acting_user())
    except (LookupError, EcgcadError) as exc:
        fail(str(exc).strip("'\""))
    typer.echo(
        f"ECG {ecg_id} queued for rescore as result version {out['result_version']} (job {out['job_id']})"
    )


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


def register(app: typer.Typer) -> None:
    """Add the delivery commands to the ``ecgcad`` app."""
    app.add_typer(deliveries_app, name="deliveries")
    app.command("rescore")(rescore)
    app.command("selftest")(selftest)
