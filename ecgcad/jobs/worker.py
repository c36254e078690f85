"""The worker: drains a :class:`~ecgcad.jobs.queue.JobQueue` with handlers registered by job kind.

A handler receives a list of claimed jobs (one, or a micro-batch of up to ``batch_size`` gathered for at most
``max_wait_ms``) and commits its own results; it returns ``None`` when every job succeeded or a mapping
``job id → exception`` for the ones that did not. The worker marks a job done only after the handler
returned, i.e. after its result was committed. A crash in between leaves the job claimed; its lease runs out
and it runs again, which handlers make harmless through the database's uniqueness constraints.

A job whose failure sends it to the dead letter (out of attempts, or not retryable) is passed, with its last
error, to the ``on_dead_letter`` callback registered for its kind: the same path for every queue engine, so
that the work the job stood for gets a final state (a scoring job's ECG becomes "not evaluated: processing
error") instead of waiting forever. A job that the queue's lease sweep dead-letters because its worker died
on the last attempt reaches no callback; the ``dead_letter_sweep`` job (:mod:`ecgcad.pipeline.dead_letter`)
settles its work from the database's state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from ecgcad.errors import PermanentDeliveryError, QueueError
from ecgcad.jobs.queue import ClaimedJob, JobQueue

logger = logging.getLogger(__name__)

Handler = Callable[[list[ClaimedJob]], Mapping[int, BaseException | None] | None]
#: Called once for a job that went to the dead letter, with its last error.
DeadLetterHandler = Callable[[ClaimedJob, BaseException], None]


@dataclasses.dataclass(slots=True)
class _Registration:
    kind: str
    handler: Handler
    batch_size: int
    max_wait_ms: int
    on_dead_letter: DeadLetterHandler | None = None


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed job should be tried again (``exc.retryable`` wins when present)."""
    flag = getattr(exc, "retryable", None)
    if flag is not None:
        return bool(flag)
    return not isinstance(exc, PermanentDeliveryError | QueueError)


class Worker:
    """Runs registered handlers for claimed jobs, in a background thread or step by step.

    Parameters
    ----------
    queue:
        The queue engine.
    worker_id:
        Recorded on claimed jobs (default: host:pid:thread).
    idle_sleep_s:
        Longest sleep when there is nothing to do (``wake()`` cuts it short).
    """

    def __init__(self, queue: JobQueue, *, worker_id: str | None = None, idle_sleep_s: float = 0.5) -> None:
        self.queue = queue
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.idle_sleep_s = idle_sleep_s
        self._registry: dict[str, _Registration] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_heartbeat: float = 0.0
        self.processed = 0

    def register(
        self,
        kind: str,
        handler: Handler,
        *,
        batch_size: int = 1,
        max_wait_ms: int = 0,
        on_dead_letter: DeadLetterHandler | None = None,
    ) -> None:
        """Handle jobs of ``kind`` with ``handler`` (in micro-batches when ``batch_size`` > 1).

        Parameters
        ----------
        kind:
            The job kind.
        handler:
            Runs a list of claimed jobs; returns ``None`` or ``job id → exception`` for the failed ones.
        batch_size, max_wait_ms:
            Micro-batch: claim up to ``batch_size`` jobs, waiting at most ``max_wait_ms`` for more.
        on_dead_letter:
            Called with a job and its last error when its failure sends it to the dead letter; an error
            it raises is logged (the job stays in the dead letter).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._registry[kind] = _Registration(kind, handler, batch_size, max_wait_ms, on_dead_letter)

    @property
    def kinds(self) -> list[str]:
        """Registered job kinds."""
        return list(self._registry)

    def wake(self) -> None:
        """Tell an idle worker that new work has arrived."""
        self._wake.set()

    # -- one step ----------------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Claim and run one batch per registered kind; return how many jobs ran."""
        ran = 0
        for reg in list(self._registry.values()):
            jobs = self.queue.claim([reg.kind], reg.batch_size, self.worker_id)
            if jobs and len(jobs) < reg.batch_size and reg.max_wait_ms > 0:
                deadline = time.monotonic() + reg.max_wait_ms / 1000
                while len(jobs) < reg.batch_size and time.monotonic() < deadline and not self._stop.is_set():
                    self._wake.wait(max(0.0, min(0.005, deadline - time.monotonic())))
                    self._wake.clear()
                    jobs += self.queue.claim([reg.kind], reg.batch_size - len(jobs), self.worker_id)
            if jobs:
                self._run(reg, jobs)
                ran += len(jobs)
        self.last_heartbeat = time.monotonic()
        return ran

    def _run(self, reg: _Registration, jobs: list[ClaimedJob]) -> None:
        try:
            failures = reg.handler(jobs) or {}
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the worker
            logger.error(
                "handler for %s failed on jobs %s:\n%s",
                reg.kind,
                [j.id for j in jobs],
                traceback.format_exc(),
            )
            failures = dict.fromkeys((j.id for j in jobs), exc)
        for job in jobs:
            error = failures.get(job.id)
            if error is None:
                self.queue.complete(job.id)
                self.processed += 1
            else:
                state = self.queue.retry_later(
                    job.id, f"{type(error).__name__}: {error}", retryable=is_retryable(error)
                )
                logger.warning(
                    "job %s (%s) attempt %d failed (%s) -> %s",
                    job.id,
                    job.kind,
                    job.attempts,
                    type(error).__name__,
                    state,
                )
                if state == "failed" and reg.on_dead_letter is not None:
                    self._dead_letter(reg.on_dead_letter, job, error)

    @staticmethod
    def _dead_letter(callback: DeadLetterHandler, job: ClaimedJob, error: BaseException) -> None:
        try:
            callback(job, error)
        except Exception:  # noqa: BLE001 - the job is in the dead letter either way; never kill the worker
            logger.error(
                "dead-letter handler for job %s (%s) failed:\n%s", job.id, job.kind, traceback.format_exc()
            )

    # -- background thread -------------------------------------------------------------------------------
    def run_forever(self) -> None:
        """Loop until :meth:`stop`; in-flight batches finish before it returns."""
        logger.info("worker %s started, kinds %s", self.worker_id, ",".join(self.kinds))
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # noqa: BLE001 - e.g. database briefly unavailable: back off, keep going
                logger.error("worker loop error:\n%s", traceback.format_exc())
                ran = 0
                self._stop.wait(1.0)
            if not ran:
                self._wake.wait(self.idle_sleep_s)
                self._wake.clear()
        logger.info("worker %s stopped", self.worker_id)

    def start(self) -> threading.Thread:
        """Run :meth:`run_forever` in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name="ecgcad-worker", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current batch; unfinished claims stay claimable after their lease."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        """Counters for readiness and metrics."""
        return {"worker_id": self.worker_id, "processed": self.processed, "alive": self.alive}
