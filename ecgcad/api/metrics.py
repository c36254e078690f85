"""Prometheus metrics rendered from the database and in-process counters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select

from ecgcad.db.models import Delivery, EcgRecord, Result, SourceObject

if TYPE_CHECKING:
    from ecgcad.context import AppContext


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def render_metrics(ctx: AppContext) -> str:
    """The metrics page."""
    from ecgcad.pipeline.delivery import CONTENT_ERROR_PREFIX

    out: list[str] = []
    with ctx.db.session() as s:
        out.append("# TYPE ecgcad_received_total counter")
        for kind, n in s.execute(select(SourceObject.kind, func.count()).group_by(SourceObject.kind)):
            out.append(_line("ecgcad_received_total", n, {"source": kind}))
        out.append("# TYPE ecgcad_ecgs_total gauge")
        for fmt, state, n in s.execute(
            select(EcgRecord.format, EcgRecord.state, func.count()).group_by(
                EcgRecord.format, EcgRecord.state
            )
        ):
            out.append(_line("ecgcad_ecgs_total", n, {"format": fmt or "unknown", "state": state}))
        out.append("# TYPE ecgcad_not_evaluated_total gauge")
        for reason, n in s.execute(
            select(Result.reason_code, func.count())
            .where(Result.scorable.is_(False))
            .group_by(Result.reason_code)
        ):
            out.append(_line("ecgcad_not_evaluated_total", n, {"reason": reason or "unknown"}))
        out.append("# TYPE ecgcad_scored_total gauge")
        out.append(
            _line(
                "ecgcad_scored_total",
                s.execute(select(func.count()).where(Result.scorable.is_(True))).scalar_one(),
            )
        )
        out.append("# TYPE ecgcad_deliveries_total gauge")
        for dest, state, n in s.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(
                Delivery.destination, Delivery.state
            )
        ):
            out.append(_line("ecgcad_deliveries_total", n, {"destination": dest, "state": state}))
        # An alert: results that failed for good because their object could not be built.
        out.append("# TYPE ecgcad_delivery_content_errors gauge")
        for dest, kind, n in s.execute(
            select(Delivery.destination, Delivery.object_kind, func.count())
            .where(Delivery.state == "failed", Delivery.last_response.startswith(CONTENT_ERROR_PREFIX))
            .group_by(Delivery.destination, Delivery.object_kind)
        ):
            out.append(_line("ecgcad_delivery_content_errors", n, {"destination": dest, "kind": kind}))
    out.append("# TYPE ecgcad_queue_jobs gauge")
    for state, n in ctx.queue.counts().items():
        out.append(_line("ecgcad_queue_jobs", n, {"state": state}))
    age = ctx.queue.oldest_waiting_age_s()
    out.append("# TYPE ecgcad_queue_oldest_age_seconds gauge")
    out.append(_line("ecgcad_queue_oldest_age_seconds", age or 0.0))
    try:
        from ecgcad.pipeline.telemetry import TELEMETRY

        out.extend(TELEMETRY.render())
    except ModuleNotFoundError:
        pass
    return "\n".join(out) + "\n"
