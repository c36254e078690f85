"""The dead-letter sweep: every ``score`` job in the dead letter leaves its ECG settled.

A ``score`` job reaches the dead letter on two paths. Its worker sends it there (out of attempts, or a
failure that is not retryable) and calls :func:`~ecgcad.pipeline.scoring.settle_dead_score_job` at once;
or its worker dies (SIGKILL, power loss) on the last allowed attempt, and the queue's lease sweep
dead-letters it with no worker left to call anything. A crash between a dead letter and its callback ends
the same way. The ``dead_letter_sweep`` job, enqueued by the scheduler every
:data:`~ecgcad.jobs.schedule.DEAD_LETTER_SWEEP_S` seconds and run by a worker, closes both gaps from the
database's state alone: it runs the lease sweep, then settles every ECG that is still ``received`` or
``queued`` although its ``score`` job is dead. Settling is idempotent (the ECG row is locked and re-read;
results are unique per ECG and model version), so a second sweep or a concurrent worker callback adds
nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ecgcad.db.models import EcgRecord
from ecgcad.errors import QueueError
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.pipeline.scoring import settle_dead_score_job

if TYPE_CHECKING:
    from ecgcad.context import AppContext
    from ecgcad.jobs.worker import Handler

logger = logging.getLogger(__name__)

#: ECG states that still wait for their score job (anything else is final).
WAITING_ECG_STATES = ("received", "queued")
#: Dead ``score`` jobs looked at per sweep, newest first (the dead letter is small in a healthy service).
SWEEP_LIMIT = 5000


def sweep_dead_score_jobs(ctx: AppContext, *, limit: int = SWEEP_LIMIT) -> int:
    """Settle the ECGs whose ``score`` job is in the dead letter but which are still waiting.

    Parameters
    ----------
    ctx:
        The application context (its queue must offer ``failed_jobs(limit, kind=...)``, as both engines do).
    limit:
        How many dead ``score`` jobs to look at, newest first.

    Returns
    -------
    int
        How many waiting ECGs it handed to :func:`~ecgcad.pipeline.scoring.settle_dead_score_job`.
    """
    stalled = ctx.queue.requeue_stalled()  # dead-letters the jobs whose worker died on the last attempt
    if stalled:
        logger.warning("re-queued %d stalled jobs", stalled)
    dead: dict[int, dict[str, Any]] = {}
    for job in ctx.queue.failed_jobs(limit, kind="score"):
        ecg_id = job["payload"].get("ecg_id")
        if isinstance(ecg_id, int):
            dead.setdefault(ecg_id, job)  # newest first: the latest dead job of an ECG
    if not dead:
        return 0
    with ctx.db.read_session() as session:
        waiting = list(
            session.execute(
                select(EcgRecord.id)
                .where(EcgRecord.id.in_(list(dead)), EcgRecord.state.in_(WAITING_ECG_STATES))
                .order_by(EcgRecord.id)
            ).scalars()
        )
    settled = 0
    for ecg_id in waiting:
        job = dead[ecg_id]
        claimed = ClaimedJob(
            int(job["id"]), "score", dict(job["payload"]), int(job["attempts"]), int(job["attempts"])
        )
        try:
            settle_dead_score_job(ctx, claimed, QueueError("the score job is in the dead letter"))
        except Exception:  # noqa: BLE001 - one ECG must not stop the sweep; the next sweep tries again
            logger.exception("settling ecg %s of the dead score job %s failed", ecg_id, job["id"])
            continue
        settled += 1
    if settled:
        logger.warning("dead-letter sweep settled %d ECGs whose score job was dead", settled)
    return settled


def make_dead_letter_sweep_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``dead_letter_sweep`` jobs (:func:`sweep_dead_score_jobs`)."""

    def handle(jobs: list[ClaimedJob]) -> None:
        sweep_dead_score_jobs(ctx)
        return None

    return handle
