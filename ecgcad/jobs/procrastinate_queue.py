"""The scale-out engine: :class:`~ecgcad.jobs.queue.JobQueue` on procrastinate (PostgreSQL).

procrastinate owns the job table, its SQL functions and worker heartbeats; ecgcad's own
:class:`~ecgcad.jobs.worker.Worker` drives it, because inference needs micro-batches (claim up to N jobs,
wait at most ``max_wait_ms``) which procrastinate's one-job-at-a-time worker does not do. How the contract
maps onto procrastinate:

============================  ======================================================================
contract                      procrastinate
============================  ======================================================================
kind                          ``queue_name`` and ``task_name``
payload (ids only)            ``args["payload"]``; ``args`` also holds ``max_attempts``,
                              ``dedupe_key`` and ``last_error``
defer in the caller's         ``procrastinate_defer_jobs_v1`` on the caller's session connection
transaction
dedupe_key (permanent)        a unique expression index on ``args->>'dedupe_key'`` (procrastinate's
                              ``queueing_lock`` only holds while a job waits)
claim                         ``procrastinate_fetch_job_v2`` (``FOR UPDATE SKIP LOCKED``) per job
lease / stalled job           worker heartbeats (``procrastinate_workers``), sent on every ``claim``
                              and ``extend_lease``: a running job whose worker sent none for
                              ``lease_s`` (it died, or its batch overran the lease) is stalled and
                              re-queued by :meth:`requeue_stalled` (the scheduler's sweep; ``claim``
                              runs it too)
retry with backoff            ``procrastinate_retry_job_v2`` with ``retry_at`` = now + backoff
dead letter                   ``procrastinate_finish_job_v1(…, 'failed')``; the error stays in args
states                        todo → queued, doing → running, succeeded → done, failed → failed
============================  ======================================================================
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from ecgcad.db.session import Database
from ecgcad.errors import QueueError
from ecgcad.jobs.procrastinate_store import InMemoryStore, JobStore, PostgresStore, Row
from ecgcad.jobs.queue import STATES, BackoffPolicy, ClaimedJob

if TYPE_CHECKING:
    from procrastinate.testing import InMemoryConnector

logger = logging.getLogger(__name__)

_STATE_OF = {
    "todo": "queued",
    "doing": "running",
    "succeeded": "done",
    "failed": "failed",
    "cancelled": "failed",
    "aborting": "running",
    "aborted": "failed",
}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ProcrastinateJobQueue:
    """:class:`~ecgcad.jobs.queue.JobQueue` on procrastinate's job model.

    Parameters
    ----------
    db:
        The service's database (its sessions are the transactions ``defer`` joins).
    store:
        Where jobs live: :class:`PostgresStore` on ``db`` (default) or :class:`InMemoryStore`.
    lease_s:
        A running job whose worker has sent no heartbeat for this long is stalled.
    max_attempts:
        Default attempts before the dead letter.
    backoff:
        Retry delays.
    install_schema:
        Apply procrastinate's schema when it is missing (PostgreSQL store only).
    """

    def __init__(
        self,
        db: Database,
        *,
        store: JobStore | None = None,
        lease_s: float = 120.0,
        max_attempts: int = 5,
        backoff: BackoffPolicy | None = None,
        install_schema: bool = True,
    ) -> None:
        self.db = db
        if store is None:
            if db.dialect != "postgresql":
                raise QueueError("the procrastinate engine needs PostgreSQL (or an in-memory store)")
            pg = PostgresStore(db.engine)
            if install_schema and pg.install_schema():
                logger.info("installed procrastinate's schema")
            store = pg
        self.store: JobStore = store
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.backoff = backoff or BackoffPolicy()
        self._workers: dict[str, int] = {}
        self._workers_lock = threading.Lock()
        self._last_sweep = 0.0

    @classmethod
    def in_memory(
        cls,
        db: Database,
        connector: InMemoryConnector | None = None,
        *,
        lease_s: float = 120.0,
        max_attempts: int = 5,
        backoff: BackoffPolicy | None = None,
        install_schema: bool = True,
    ) -> ProcrastinateJobQueue:
        """A queue on procrastinate's ``InMemoryConnector`` (tests); ``db`` still provides the sessions."""
        return cls(
            db,
            store=InMemoryStore(connector),
            lease_s=lease_s,
            max_attempts=max_attempts,
            backoff=backoff,
            install_schema=install_schema,
        )

    # -- enqueue -----------------------------------------------------------------------------------------
    def defer(
        self,
        session: Session,
        kind: str,
        payload: dict[str, Any],
        *,
        dedupe_key: str | None = None,
        run_after: dt.datetime | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
    ) -> int | None:
        """Enqueue in the caller's transaction; return the job id, or ``None`` if ``dedupe_key`` exists."""
        if not kind:
            raise QueueError("job kind must not be empty")
        args: dict[str, Any] = {"payload": payload, "max_attempts": max_attempts or self.max_attempts}
        if dedupe_key is not None:
            args["dedupe_key"] = dedupe_key
        job = {
            "queue_name": kind,
            "task_name": kind,
            "priority": priority,
            "args": args,
            "scheduled_at": run_after,
        }
        return self.store.defer(session, job)

    # -- workers and heartbeats --------------------------------------------------------------------------
    def _heartbeat(self, worker_id: str) -> int:
        """Register ``worker_id`` as a procrastinate worker on first use, else refresh its heartbeat.

        The heartbeat is a sign of progress, sent when the worker claims: a batch that overruns ``lease_s``
        lets its jobs go stalled exactly as an expired lease does in the embedded engine.
        """
        with self._workers_lock:
            number = self._workers.get(worker_id)
            if number is None:
                number = self.store.register_worker()
                self._workers[worker_id] = number
                logger.info("worker %s registered as procrastinate worker %d", worker_id, number)
                return number
        self.store.heartbeat([number])
        return number

    def close(self) -> None:
        """Unregister this process's workers (their unfinished jobs become stalled at once)."""
        with self._workers_lock:
            numbers = list(self._workers.values())
            self._workers.clear()
        for number in numbers:
            try:
                self.store.unregister_worker(number)
            except Exception:  # noqa: BLE001 - stale workers are pruned by the sweep anyway
                logger.warning("could not unregister procrastinate worker %d", number, exc_info=True)

    # -- claim -------------------------------------------------------------------------------------------
    def claim(self, kinds: Sequence[str], limit: int, worker_id: str) -> list[ClaimedJob]:
        """Claim up to ``limit`` runnable jobs of ``kinds``; re-queues stalled jobs first when due."""
        if limit < 1:
            return []
        now = time.monotonic()
        if now - self._last_sweep >= max(self.lease_s / 2, 0.1):
            self._last_sweep = now
            try:
                self.requeue_stalled()
            except Exception:  # noqa: BLE001 - the claim itself still works
                logger.warning("stalled-job sweep in claim failed", exc_info=True)
        number = self._heartbeat(worker_id)
        claimed: list[ClaimedJob] = []
        for _ in range(limit):
            row = self.store.fetch(list(kinds), number)
            if row is None:
                break
            args = row["args"]
            claimed.append(
                ClaimedJob(
                    int(row["id"]),
                    str(row["task_name"]),
                    dict(args.get("payload", {})),
                    int(row["attempts"]) + 1,
                    int(args.get("max_attempts", self.max_attempts)),
                )
            )
        return claimed

    def extend_lease(self, job_ids: Sequence[int]) -> None:
        """Push the lease of running jobs forward (long batches): a heartbeat for this process's workers."""
        with self._workers_lock:
            numbers = list(self._workers.values())
        if numbers:
            self.store.heartbeat(numbers)

    # -- finish ------------------------------------------------------------------------------------------
    def complete(self, job_id: int) -> None:
        """Mark a claimed job done (after its result is committed)."""
        try:
            self.store.finish(job_id, "succeeded")
        except Exception as exc:  # noqa: BLE001 - e.g. re-queued as stalled meanwhile: the re-run is harmless
            logger.warning("job %s could not be marked done: %s", job_id, type(exc).__name__)

    def retry_later(self, job_id: int, error: str, *, retryable: bool = True) -> str:
        """Record a failure; return the new state (``queued`` with backoff, or ``failed``)."""
        row = self.store.get(job_id)
        if row is None:
            raise QueueError(f"no job {job_id}")
        self.store.set_error(job_id, error[:4000])
        if row["status"] != "doing":
            return _STATE_OF.get(str(row["status"]), "queued")
        attempts = int(row["attempts"]) + 1
        max_attempts = int(row["args"].get("max_attempts", self.max_attempts))
        if retryable and attempts < max_attempts:
            self.store.retry(job_id, _utcnow() + dt.timedelta(seconds=self.backoff.delay(attempts)))
            return "queued"
        self.store.finish(job_id, "failed")
        logger.error("job %s (%s) failed after %d attempts", job_id, row["task_name"], attempts)
        return "failed"

    # -- maintenance and views ---------------------------------------------------------------------------
    def requeue_stalled(self) -> int:
        """Re-queue running jobs whose worker stopped sending heartbeats; return how many."""
        requeued = 0
        for row in self.store.stalled(self.lease_s):
            job_id = int(row["id"])
            attempts = int(row["attempts"]) + 1
            max_attempts = int(row["args"].get("max_attempts", self.max_attempts))
            try:
                if attempts >= max_attempts:
                    # Its worker died on the last allowed attempt: dead letter, do not hand it out again.
                    previous = row["args"].get("last_error") or ""
                    self.store.set_error(
                        job_id, (previous + " | " if previous else "") + "worker lost on the last attempt"
                    )
                    self.store.finish(job_id, "failed")
                    continue
                self.store.retry(job_id, _utcnow())
            except Exception:  # noqa: BLE001 - another sweeper got there first
                logger.debug("stalled job %s already handled", job_id, exc_info=True)
                continue
            logger.warning("job %s stalled (worker %s lost); re-queued", job_id, row.get("worker_id"))
            requeued += 1
        self.store.prune_workers(max(self.lease_s * 10, 3600.0))
        return requeued

    def counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        out = dict.fromkeys(STATES, 0)
        for status, n in self.store.status_counts().items():
            state = _STATE_OF.get(status, status)
            out[state] = out.get(state, 0) + n
        return out

    def depth(self) -> int:
        """Jobs waiting or running (for back-pressure)."""
        counts = self.counts()
        return counts["queued"] + counts["running"]

    def oldest_waiting_age_s(self) -> float | None:
        """Age in seconds of the oldest queued job, or ``None``."""
        oldest = self.store.oldest_todo()
        if oldest is None:
            return None
        return max(0.0, (_utcnow() - oldest).total_seconds())

    def retry(self, job_id: int) -> None:
        """Put a failed job back in the queue (operator action); its attempts start again."""
        row = self.store.get(job_id)
        if row is None:
            raise QueueError(f"no job {job_id}")
        state = _STATE_OF.get(str(row["status"]), str(row["status"]))
        if state != "failed":
            raise QueueError(f"job {job_id} is {state}, not failed")
        self.store.retry(job_id, _utcnow())
        self.store.reset_attempts(job_id)

    def get(self, job_id: int) -> dict[str, Any] | None:
        """A job as a dict (id, kind, payload, state, attempts, last_error …)."""
        row = self.store.get(job_id)
        return None if row is None else self._as_dict(row)

    def _as_dict(self, row: Row) -> dict[str, Any]:
        args = row["args"]
        status = str(row["status"])
        attempts = int(row["attempts"]) + (1 if status == "doing" else 0)
        return {
            "id": int(row["id"]),
            "kind": row["task_name"],
            "payload": dict(args.get("payload", {})),
            "state": _STATE_OF.get(status, status),
            "attempts": attempts,
            "max_attempts": int(args.get("max_attempts", self.max_attempts)),
            "last_error": args.get("last_error"),
            "run_after": row.get("scheduled_at") or row.get("deferred_at"),
            "dedupe_key": args.get("dedupe_key"),
        }

    def failed_jobs(self, limit: int = 100, *, kind: str | None = None) -> list[dict[str, Any]]:
        """Failed (dead-letter) jobs with their errors, newest first (only those of ``kind`` when given)."""
        return [
            {
                "id": int(r["id"]),
                "kind": r["task_name"],
                "attempts": int(r["attempts"]),
                "last_error": r["args"].get("last_error"),
                "payload": dict(r["args"].get("payload", {})),
            }
            for r in self.store.failed(limit, kind)
        ]
