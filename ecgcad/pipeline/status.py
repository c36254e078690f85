"""The state of each configured destination, for readiness (``/readyz``) and operators.

Read from the ``deliveries`` table: how many deliveries wait (pending, sending, retrying) or failed for good,
when the destination last confirmed one, and what it answered last when it did not. A destination that
refuses or is down does not make the service unready (ECGs are still accepted and kept until it is back);
readiness shows it so that monitoring can alert on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from ecgcad.db.models import Delivery

if TYPE_CHECKING:
    from ecgcad.context import AppContext

#: Delivery states that are still to be sent.
WAITING = ("pending", "sending", "retrying")


def destination_states(ctx: AppContext) -> dict[str, dict[str, Any]]:
    """Per configured destination: ``kind``, ``enabled``, ``waiting``, ``failed``, ``last_sent_at`` and
    ``last_error`` (the peer's last answer of a delivery not sent, or ``None``)."""
    names = [d.name for d in ctx.settings.destinations]
    states: dict[str, dict[str, Any]] = {
        d.name: {
            "kind": d.kind,
            "enabled": d.enabled,
            "waiting": 0,
            "failed": 0,
            "last_sent_at": None,
            "last_error": None,
        }
        for d in ctx.settings.destinations
    }
    if not names:
        return states
    with ctx.db.read_session() as session:
        counts = session.execute(
            select(Delivery.destination, Delivery.state, func.count())
            .where(Delivery.destination.in_(names), Delivery.state.in_((*WAITING, "failed")))
            .group_by(Delivery.destination, Delivery.state)
        ).all()
        for name, state, n in counts:
            states[name]["failed" if state == "failed" else "waiting"] += int(n)
        sent = session.execute(
            select(Delivery.destination, func.max(Delivery.sent_at))
            .where(Delivery.destination.in_(names), Delivery.state == "sent")
            .group_by(Delivery.destination)
        ).all()
        for name, at in sent:
            states[name]["last_sent_at"] = at.isoformat() if at is not None else None
        for name in names:
            if states[name]["waiting"] or states[name]["failed"]:
                states[name]["last_error"] = session.execute(
                    select(Delivery.last_response)
                    .where(
                        Delivery.destination == name,
                        Delivery.state.in_(("retrying", "failed")),
                        Delivery.last_response.is_not(None),
                    )
                    .order_by(Delivery.updated_at.desc())
                    .limit(1)
                ).scalar()
    return states
