"""The APScheduler 3.11 schedule. Every scheduled job only enqueues (or does tiny bookkeeping).

Jobs are enqueued with a period-stamped dedupe key, so a second scheduler process is harmless.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

#: Period of the ``dead_letter_sweep`` job (seconds): an ECG whose score job died with its worker on the
#: last attempt is settled ("not evaluated: processing error") within the lease plus this.
DEAD_LETTER_SWEEP_S = 300


def _enqueue_periodic(ctx: AppContext, kind: str, period_s: int) -> None:
    stamp = int(dt.datetime.now(dt.UTC).timestamp()) // period_s
    try:
        with ctx.db.session() as s:
            ctx.queue.defer(s, kind, {"period": stamp}, dedupe_key=f"sched:{kind}:{stamp}")
    except Exception:  # noqa: BLE001 - the next tick tries again
        logger.warning("could not enqueue scheduled %s", kind, exc_info=True)


def _enqueue_pacs_catch_up(ctx: AppContext, source: str, period_s: int) -> None:
    stamp = int(dt.datetime.now(dt.UTC).timestamp()) // period_s
    try:
        with ctx.db.session() as s:
            ctx.queue.defer(
                s,
                "pacs_catch_up",
                {"source": source, "period": stamp},
                dedupe_key=f"sched:pacs:{source}:{stamp}",
            )
    except Exception:  # noqa: BLE001 - the next tick tries again
        logger.warning("could not enqueue PACS catch-up for %s", source, exc_info=True)


def _requeue_stalled(ctx: AppContext) -> None:
    try:
        n = ctx.queue.requeue_stalled()
        if n:
            logger.warning("re-queued %d stalled jobs", n)
    except Exception:  # noqa: BLE001
        logger.warning("stalled-job sweep failed", exc_info=True)


class Schedule:
    """A started/stoppable APScheduler with ecgcad's jobs."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.scheduler = BackgroundScheduler(
            timezone=dt.UTC, job_defaults={"coalesce": True, "max_instances": 1}
        )
        self.scheduler.add_job(_requeue_stalled, "interval", seconds=30, args=[ctx], id="requeue_stalled")
        self.scheduler.add_job(
            _enqueue_periodic,
            "interval",
            seconds=DEAD_LETTER_SWEEP_S,
            args=[ctx, "dead_letter_sweep", DEAD_LETTER_SWEEP_S],
            id="dead_letter_sweep",
        )
        self.scheduler.add_job(
            _enqueue_periodic, "cron", hour=3, minute=15, args=[ctx, "retention", 86400], id="retention"
        )
        self.scheduler.add_job(
            _enqueue_periodic, "cron", hour=3, minute=45, args=[ctx, "maintenance", 86400], id="maintenance"
        )
        for source in getattr(ctx.settings, "pacs_sources", []):
            if source.catch_up:
                self.scheduler.add_job(
                    _enqueue_pacs_catch_up,
                    "interval",
                    seconds=source.interval_s,
                    args=[ctx, source.name, source.interval_s],
                    id=f"pacs_catch_up:{source.name}",
                )

    def start(self) -> None:
        """Start the background scheduler thread."""
        self.scheduler.start()

    def stop(self) -> None:
        """Stop without waiting for running jobs (they only enqueue)."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        """True while running."""
        return bool(self.scheduler.running)

    def job_ids(self) -> list[str]:
        """Scheduled job ids."""
        return [j.id for j in self.scheduler.get_jobs()]


def build_scheduler(ctx: AppContext) -> Schedule:
    """The schedule for ``ctx``."""
    return Schedule(ctx)
