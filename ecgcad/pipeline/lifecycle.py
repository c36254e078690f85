"""Model lifecycle: promote a checkpoint to active, roll back (comparison: :mod:`ecgcad.training.compare`).

The active checkpoint is recorded in the ``KvState`` row :data:`ACTIVE_KEY` (``checkpoint``, ``sha256``,
``model_version``, ``promoted_at``, ``user``, ``reason`` and a ``history`` of the previously active
entries); the service reads it at start (:func:`active_checkpoint`, used by
:meth:`ecgcad.context.AppContext.get_predictor`) and it wins over ``[model] checkpoint``. Promotion and
rollback also set ``ModelVersion.role`` (``active`` for the new one, ``retired`` for the one replaced) and
write a ``model.promoted`` / ``model.rollback`` audit event, in one transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgcad.errors import CheckpointError, ModelError
from ecgcad.vessels import VESSELS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from ecgcad.db.session import Database

logger = logging.getLogger(__name__)

ACTIVE_KEY = "model.active"


def active_checkpoint(session: Session) -> dict[str, Any] | None:
    """The promoted active checkpoint entry (``None`` when nothing was promoted)."""
    from ecgcad.db.models import KvState

    row = session.get(KvState, ACTIVE_KEY)
    return dict(row.value) if row is not None and row.value.get("checkpoint") else None


def resolve_active_checkpoint(db: Database) -> str | None:
    """Path of the promoted checkpoint for the service, checking its SHA-256 still matches.

    Raises
    ------
    CheckpointError
        The promoted file has changed or disappeared since it was promoted.
    """
    from ecgcad.model.checkpoint import sha256_bytes

    with db.session() as session:
        entry = active_checkpoint(session)
    if entry is None:
        return None
    path = Path(entry["checkpoint"])
    try:
        sha = sha256_bytes(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(f"promoted checkpoint {path} cannot be read: {exc.strerror or exc}") from exc
    if sha != entry["sha256"]:
        raise CheckpointError(f"promoted checkpoint {path} has changed since promotion (SHA-256 differs)")
    return str(path)


def _entry(path: Path, user: str | None, reason: str) -> dict[str, Any]:
    from ecgcad.model.checkpoint import load_checkpoint
    from ecgcad.model.predictor import format_model_version

    loaded = load_checkpoint(path)
    if tuple(loaded.outputs) != VESSELS:
        raise ModelError(f"{path} is not a 4-vessel model (outputs {list(loaded.outputs)[:6]})")
    meta = loaded.metadata
    return {
        "checkpoint": str(path.resolve()),
        "sha256": loaded.sha256,
        "name": str(meta["name"]),
        "version": str(meta["version"]),
        "model_version": format_model_version(str(meta["name"]), str(meta["version"]), loaded.sha256),
        "demonstration": loaded.demonstration,
        "metadata": {
            k: meta.get(k) for k in ("name", "version", "thresholds", "intended_use", "demonstration")
        },
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "user": user,
        "reason": reason,
    }


def _set_roles(session: Session, active: dict[str, Any], retired: dict[str, Any] | None) -> None:
    from sqlalchemy import select

    from ecgcad.db.models import ModelVersion

    for mv in session.execute(select(ModelVersion).where(ModelVersion.role == "active")).scalars():
        if mv.version != active["model_version"]:
            mv.role = "retired"
    row = session.execute(
        select(ModelVersion).where(ModelVersion.version == active["model_version"])
    ).scalar_one_or_none()
    if row is None:
        row = ModelVersion(
            name=active["name"],
            version=active["model_version"],
            checkpoint_sha256=active["sha256"],
            checkpoint_path=active["checkpoint"],
            demonstration=bool(active["demonstration"]),
            model_metadata=active["metadata"],
        )
        session.add(row)
    row.role = "active"
    row.checkpoint_path = active["checkpoint"]
    session.flush()


def _write(session: Session, value: dict[str, Any]) -> None:
    from ecgcad.db.models import KvState

    row = session.get(KvState, ACTIVE_KEY)
    if row is None:
        session.add(KvState(key=ACTIVE_KEY, value=value))
    else:
        row.value = value
    session.flush()


def promote(
    session: Session, checkpoint: str | os.PathLike[str], *, user: str | None = None, reason: str = ""
) -> dict[str, Any]:
    """Make ``checkpoint`` the active model (takes effect when the service next starts); audited.

    Raises
    ------
    CheckpointError
        The file does not load strictly.
    ModelError
        Not a 4-vessel model, or it is already the active one.
    """
    from ecgcad.db import audit

    new = _entry(Path(checkpoint), user, reason)
    current = active_checkpoint(session)
    if current is not None and current["sha256"] == new["sha256"]:
        raise ModelError(f"{new['model_version']} is already the active model")
    history = list((current or {}).pop("history", []) or [])
    if current is not None:
        history.append(current)
    _write(session, {**new, "history": history})
    _set_roles(session, new, current)
    audit.record(
        session,
        "model.promoted",
        user=user,
        detail={
            "model_version": new["model_version"],
            "checkpoint_sha256": new["sha256"],
            "previous": current["model_version"] if current else None,
            "reason": reason,
        },
    )
    logger.info(
        "model %s promoted (previous %s)", new["model_version"], current["model_version"] if current else None
    )
    return new


def rollback(session: Session, *, user: str | None = None, reason: str = "") -> dict[str, Any]:
    """Make the previously active model active again; audited.

    Raises
    ------
    ModelError
        Nothing to roll back to.
    CheckpointError
        The previous checkpoint file has changed or gone.
    """
    from ecgcad.db import audit
    from ecgcad.model.checkpoint import sha256_bytes

    current = active_checkpoint(session)
    history = list((current or {}).get("history") or [])
    if current is None or not history:
        raise ModelError("no previously active model to roll back to")
    previous = history.pop()
    path = Path(previous["checkpoint"])
    try:
        ok = sha256_bytes(path.read_bytes()) == previous["sha256"]
    except OSError:
        ok = False
    if not ok:
        raise CheckpointError(f"previous checkpoint {path} is missing or has changed; cannot roll back")
    restored = {
        **previous,
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "user": user,
        "reason": reason,
    }
    _write(session, {**restored, "history": history})
    _set_roles(session, restored, current)
    audit.record(
        session,
        "model.rollback",
        user=user,
        detail={
            "model_version": restored["model_version"],
            "replaced": current["model_version"],
            "reason": reason,
        },
    )
    logger.info("model rolled back to %s (from %s)", restored["model_version"], current["model_version"])
    return restored
