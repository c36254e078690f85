"""``ecgcad token …`` and ``ecgcad audit …`` commands (registered by :mod:`ecgcad.cli`).

Exit codes: 0 success, 1 ``audit verify`` found a broken chain (or one that no longer matches its last
checkpoint, or no valid checkpoint) or ``audit checkpoint`` refused to write one, 2 bad input (one line on
stderr).
"""

from __future__ import annotations

import datetime as dt
import json

import typer

from ecgcad.cli._common import ConfigOption, acting_user, fail, open_database, settings_or_fail
from ecgcad.errors import EcgcadError

token_app = typer.Typer(help="API tokens (stored hashed; shown once).", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail: query, export, verify, checkpoint.", no_args_is_help=True)


def _when(value: str | None, option: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option}: not an ISO 8601 date or time: {value!r}")


@token_app.command("create")
def token_create(
    name: str = typer.Argument(..., help="Token name (the user in audit events)."),
    role: str = typer.Option(..., "--role", help="admin | operator | viewer."),
    config: ConfigOption = None,
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from ecgcad.api.auth import create_token

    db = open_database(config)
    try:
        with db.session() as s:
            token = create_token(s, name, role, actor=acting_user())
    except EcgcadError as exc:
        fail(str(exc))
    finally:
        db.dispose()
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="Token name."), config: ConfigOption = None) -> None:
    """Revoke a token; requests with it get 401 from now on."""
    from ecgcad.api.auth import revoke_token

    db = open_database(config)
    try:
        with db.session() as s:
            revoke_token(s, name, actor=acting_user())
    except EcgcadError as exc:
        fail(str(exc))
    finally:
        db.dispose()
    typer.echo(f"revoked {name}")


@token_app.command("list")
def token_list(config: ConfigOption = None) -> None:
    """List tokens (name, role, created, last used, revoked) — never the tokens themselves."""
    from ecgcad.api.auth import list_tokens

    db = open_database(config)
    try:
        with db.session() as s:
            rows = [(t.name, t.role, t.created_at, t.last_used_at, t.revoked_at) for t in list_tokens(s)]
    finally:
        db.dispose()
    for name, role, created, used, revoked in rows:
        state = f"revoked {revoked:%Y-%m-%d %H:%M}" if revoked else "active"
        last = f"{used:%Y-%m-%d %H:%M}" if used else "never"
        typer.echo(f"{name}\t{role}\t{created:%Y-%m-%d %H:%M}\tlast used {last}\t{state}")


@audit_app.command("query")
def audit_query(
    patient_id: str | None = typer.Option(None, "--patient-id", help="Patient ID (0010,0020)."),
    user: str | None = typer.Option(None, "--user", help="Token name, cli:<login>, …"),
    event: str | None = typer.Option(None, "--event", help="Event type (api.read) or DICOM code (110101)."),
    since: str | None = typer.Option(None, "--since", help="At or after (ISO 8601, UTC if no zone)."),
    until: str | None = typer.Option(None, "--until", help="Before (ISO 8601, UTC if no zone)."),
    format: str = typer.Option("table", "--format", help="table | json | csv."),
    limit: int = typer.Option(10000, "--limit", min=1, help="At most this many events (newest first)."),
    config: ConfigOption = None,
) -> None:
    """Query the audit trail; the query is itself recorded (DICOM 110101 Audit Log Used)."""
    from ecgcad.db import audit

    if format not in ("table", "json", "csv"):
        fail(f"--format must be table, json or csv, not {format!r}")
    filters = audit.AuditQuery(
        patient_id=patient_id,
        user=user,
        event=event,
        since=_when(since, "--since"),
        until=_when(until, "--until"),
    )
    db = open_database(config)
    try:
        with db.session() as s:
            events = audit.query_events(s, filters, limit=limit)
            rows = [audit.event_as_dict(e) for e in events]
            csv_text = audit.events_to_csv(events) if format == "csv" else ""
            audit.record(
                s,
                "audit.read",
                user=acting_user(),
                role="cli",
                patient_id=patient_id,
                query=filters.describe(),
                detail={"what": "ecgcad audit query", "count": len(rows), "format": format},
            )
    finally:
        db.dispose()
    if format == "json":
        typer.echo(json.dumps(rows, indent=2))
    elif format == "csv":
        typer.echo(csv_text, nl=False)
    else:
        header = (
            "id",
            "occurred_at",
            "event_type",
            "event_id",
            "outcome",
            "user",
            "role",
            "patient_id",
            "ecg_id",
        )
        typer.echo("\t".join(header))
        for row in rows:
            typer.echo("\t".join("" if row[k] is None else str(row[k]) for k in header))


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the audit chain with its key and against its last signed checkpoint.

    Exit 1 and say why when a row was changed, inserted or removed, events before the checkpoint are
    missing (truncation), the chain was recomputed, or the checkpoint is missing or not signed with the key.
    """
    from ecgcad.db.audit_checkpoint import verify_database

    settings = settings_or_fail(config)
    db = open_database(config)
    try:
        report, checkpoint = verify_database(db, settings.audit_checkpoint_file)
    finally:
        db.dispose()
    if report.ok:
        covered = f"; checkpoint of {checkpoint.written_at}: {checkpoint.count} events" if checkpoint else ""
        typer.echo(f"audit chain intact: {report.checked} events{covered}")
        return
    where = f" at event {report.first_broken_id}" if report.first_broken_id is not None else ""
    typer.echo(f"audit chain BROKEN{where} ({report.checked} checked): {report.reason}", err=True)
    raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(config: ConfigOption = None) -> None:
    """Verify the chain since the last checkpoint and write a new signed checkpoint (count + head).

    Exit 1, writing nothing, when the chain no longer matches the last checkpoint.
    """
    from ecgcad.db.audit_checkpoint import take_checkpoint

    settings = settings_or_fail(config)
    db = open_database(config)
    try:
        checkpoint = take_checkpoint(db, settings.audit_checkpoint_file)
    except EcgcadError as exc:
        typer.echo(f"no audit checkpoint written: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    typer.echo(
        f"audit checkpoint written to {settings.audit_checkpoint_file}: {checkpoint.count} events, "
        f"head {checkpoint.head[:16]}… (id {checkpoint.last_id})"
    )


def register(app: typer.Typer) -> None:
    """Add ``token`` and ``audit`` to the ``ecgcad`` command."""
    app.add_typer(token_app, name="token")
    app.add_typer(audit_app, name="audit")
