"""The ``JobQueue`` interface and the embedded engine on the ``jobs`` table.

Semantics every engine provides (and the contract suite in ``tests/jobs/test_queue_contract.py`` checks):

* :meth:`JobQueue.defer` joins the caller's transaction: roll it back and the job never existed.
* A ``dedupe_key`` makes a second ``defer`` with the same key a no-op (returns ``None``).
* :meth:`JobQueue.claim` hands out up to ``limit`` runnable jobs of the given kinds, each under a lease;
  a job whose lease ran out (its worker died) is claimable again.
* :meth:`JobQueue.retry_later` puts a job back with exponential backoff until ``max_attempts``, after which
  it is ``failed`` (the dead letter) with its last error; :meth:`JobQueue.complete` marks it ``done``.

Payloads hold ids, never waveforms.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from ecgcad.db.models import Job, utcnow
from ecgcad.db.prepared import DirectInsert, Prepared, bound_to, insert_ignoring_conflict
from ecgcad.db.session import Database, DirectTransaction
from ecgcad.errors import QueueError

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed")


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job handed to a worker."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff: ``base × 2^(attempt−1)`` capped at ``maximum``, with ± ``jitter`` fraction."""

    base_s: float = 2.0
    maximum_s: float = 600.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """Delay in seconds before attempt ``attempt + 1``."""
        raw = min(self.base_s * (2 ** max(attempt - 1, 0)), self.maximum_s)
        if self.jitter:
            raw *= 1 + random.uniform(-self.jitter, self.jitter)  # noqa: S311 - not security relevant
        return raw


@runtime_checkable
class JobQueue(Protocol):
    """What the listeners, the worker and the scheduler need from a queue engine."""

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
        ...

    def claim(self, kinds: Sequence[str], limit: int, worker_id: str) -> list[ClaimedJob]:
        """Claim up to ``limit`` runnable jobs of ``kinds`` under a lease."""
        ...

    def complete(self, job_id: int) -> None:
        """Mark a claimed job done (after its result is committed)."""
        ...

    def retry_later(self, job_id: int, error: str, *, retryable: bool = True) -> str:
        """Record a failure; return the new state (``queued`` with backoff, or ``failed``)."""
        ...

    def requeue_stalled(self) -> int:
        """Make jobs with an expired lease claimable now; return how many."""
        ...

    def counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        ...

    def depth(self) -> int:
        """Jobs waiting or running (for back-pressure)."""
        ...

    def oldest_waiting_age_s(self) -> float | None:
        """Age in seconds of the oldest queued job, or ``None``."""
        ...

    def retry(self, job_id: int) -> None:
        """Put a failed job back in the queue (operator action)."""
        ...

    def get(self, job_id: int) -> dict[str, Any] | None:
        """A job as a dict (id, kind, payload, state, attempts, last_error …)."""
        ...

    def failed_jobs(self, limit: int = 100, *, kind: str | None = None) -> list[dict[str, Any]]:
        """Failed (dead-letter) jobs with their errors, newest first (only those of ``kind`` when given)."""
        ...


@functools.cache
def _defer_statement(dialect: str, dedupe: bool) -> Prepared:
    """The INSERT of :meth:`SqlJobQueue.defer`, compiled once (it is on the hot path of ingest)."""
    if not dedupe:
        return Prepared(insert(Job).returning(Job.id))
    return Prepared(insert_ignoring_conflict(dialect, Job, "dedupe_key").returning(Job.id))


_DEFER_COLUMNS = (
    "kind",
    "payload",
    "dedupe_key",
    "state",
    "priority",
    "attempts",
    "max_attempts",
    "run_after",
    "created_at",
    "updated_at",
)
#: :meth:`SqlJobQueue.defer` in a direct transaction (the listeners' SQLite path).
_JOBS: Any = Job.__table__
_DIRECT_DEFER = DirectInsert(_JOBS, _DEFER_COLUMNS, on_conflict="dedupe_key", returning="id")
_DIRECT_DEFER_PLAIN = DirectInsert(_JOBS, _DEFER_COLUMNS, returning="id")


class SqlJobQueue:
    """The embedded engine: jobs in the ``jobs`` table (SQLite; also runs on PostgreSQL).

    Parameters
    ----------
    db:
        The database.
    lease_s:
        How long a claim lasts; a job not completed within it is claimable again.
    max_attempts:
        Default attempts before the dead letter.
    backoff:
        Retry delays.
    """

    def __init__(
        self,
        db: Database,
        *,
        lease_s: float = 120.0,
        max_attempts: int = 5,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.db = db
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.backoff = backoff or BackoffPolicy()

    # -- enqueue -----------------------------------------------------------------------------------------
    def defer(
        self,
        session: Session | DirectTransaction,
        kind: str,
        payload: dict[str, Any],
        *,
        dedupe_key: str | None = None,
        run_after: dt.datetime | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
    ) -> int | None:
        if not kind:
            raise QueueError("job kind must not be empty")
        now = utcnow()
        values = {
            "kind": kind,
            "payload": payload,
            "dedupe_key": dedupe_key,
            "state": "queued",
            "priority": priority,
            "attempts": 0,
            "max_attempts": max_attempts or self.max_attempts,
            "run_after": run_after or now,
            "created_at": now,
            "updated_at": now,
        }
        # Core on the session's connection: same transaction, no unit-of-work overhead (hot path of ingest).
        if isinstance(session, DirectTransaction):
            statement = _DIRECT_DEFER if dedupe_key is not None else _DIRECT_DEFER_PLAIN
            job_id = statement.execute(session, *[values[name] for name in statement.columns])
        else:
            dialect, _ = bound_to(session)
            job_id = _defer_statement(dialect.name, dedupe_key is not None).execute(session, values)
        return int(job_id) if job_id is not None else None

    # -- claim -------------------------------------------------------------------------------------------
    def claim(self, kinds: Sequence[str], limit: int, worker_id: str) -> list[ClaimedJob]:
        if limit < 1:
            return []
        now = utcnow()
        lease_until = now + dt.timedelta(seconds=self.lease_s)
        claimed: list[ClaimedJob] = []
        with self.db.session() as session:
            runnable = or_(
                (Job.state == "queued") & (Job.run_after <= now),
                (Job.state == "running") & (Job.lease_until < now),
            )
            stmt = (
                select(Job)
                .where(Job.kind.in_(list(kinds)), runnable)
                .order_by(Job.priority.desc(), Job.id)
                .limit(limit)
            )
            if session.get_bind().dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            for job in session.execute(stmt).scalars():
                if job.state == "running" and job.attempts >= job.max_attempts:
                    # Its worker died on the last allowed attempt: dead letter, do not hand it out again.
                    job.state = "failed"
                    job.last_error = (job.last_error or "") + " | lease expired on the last attempt"
                    job.finished_at = now
                    continue
                if job.state == "running":
                    logger.warning(
                        "job %s lease expired (claimed by %s); claiming again", job.id, job.claimed_by
                    )
                job.state = "running"
                job.attempts += 1
                job.lease_until = lease_until
                job.claimed_by = worker_id
                job.updated_at = now
                claimed.append(
                    ClaimedJob(job.id, job.kind, dict(job.payload), job.attempts, job.max_attempts)
                )
        return claimed

    def extend_lease(self, job_ids: Sequence[int]) -> None:
        """Push the lease of running jobs forward (long batches)."""
        until = utcnow() + dt.timedelta(seconds=self.lease_s)
        with self.db.session() as session:
            session.execute(
                update(Job).where(Job.id.in_(list(job_ids)), Job.state == "running").values(lease_until=until)
            )

    # -- finish ------------------------------------------------------------------------------------------
    def complete(self, job_id: int) -> None:
        with self.db.session() as session:
            self.complete_in(session, job_id)

    def complete_in(self, session: Session, job_id: int) -> None:
        """Mark done inside the caller's transaction (the one that commits the job's result)."""
        now = utcnow()
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state="done", finished_at=now, updated_at=now, lease_until=None, last_error=None)
        )

    def retry_later(self, job_id: int, error: str, *, retryable: bool = True) -> str:
        now = utcnow()
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise QueueError(f"no job {job_id}")
            job.last_error = error[:4000]
            job.updated_at = now
            job.lease_until = None
            if retryable and job.attempts < job.max_attempts:
                job.state = "queued"
                job.run_after = now + dt.timedelta(seconds=self.backoff.delay(job.attempts))
            else:
                job.state = "failed"
                job.finished_at = now
                logger.error("job %s (%s) failed after %d attempts", job.id, job.kind, job.attempts)
            return job.state

    # -- maintenance and views ---------------------------------------------------------------------------
    def requeue_stalled(self) -> int:
        """Make jobs with an expired lease claimable now; return how many.

        A job whose lease expired on its last allowed attempt (its worker died) goes to the dead letter
        instead, as :meth:`claim` does with it: a sweep of the dead letter (``dead_letter_sweep``) then
        finds it without waiting for a worker to claim its kind.
        """
        now = utcnow()
        with self.db.session() as session:
            session.execute(
                update(Job)
                .where(Job.state == "running", Job.lease_until < now, Job.attempts >= Job.max_attempts)
                .values(
                    state="failed",
                    last_error=func.coalesce(Job.last_error, "") + " | lease expired on the last attempt",
                    finished_at=now,
                    updated_at=now,
                    lease_until=None,
                )
            )
            result = session.execute(
                update(Job)
                .where(Job.state == "running", Job.lease_until < now, Job.attempts < Job.max_attempts)
                .values(state="queued", run_after=now, lease_until=None, updated_at=now)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def counts(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        out = dict.fromkeys(STATES, 0)
        out.update({state: int(n) for state, n in rows})
        return out

    def depth(self) -> int:
        with self.db.session() as session:
            return int(
                session.execute(select(func.count()).where(Job.state.in_(("queued", "running")))).scalar_one()
            )

    def oldest_waiting_age_s(self) -> float | None:
        with self.db.session() as session:
            oldest = session.execute(select(func.min(Job.created_at)).where(Job.state == "queued")).scalar()
        if oldest is None:
            return None
        if isinstance(oldest, str):  # SQLite aggregate bypasses the column type
            oldest = dt.datetime.fromisoformat(oldest)
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        return max(0.0, (utcnow() - oldest).total_seconds())

    def retry(self, job_id: int) -> None:
        now = utcnow()
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise QueueError(f"no job {job_id}")
            if job.state != "failed":
                raise QueueError(f"job {job_id} is {job.state}, not failed")
            job.state = "queued"
            job.attempts = 0
            job.run_after = now
            job.finished_at = None
            job.updated_at = now

    def get(self, job_id: int) -> dict[str, Any] | None:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            return {
                "id": job.id,
                "kind": job.kind,
                "payload": dict(job.payload),
                "state": job.state,
                "attempts": job.attempts,
                "max_attempts": job.max_attempts,
                "last_error": job.last_error,
                "run_after": job.run_after,
                "dedupe_key": job.dedupe_key,
            }

    def failed_jobs(self, limit: int = 100, *, kind: str | None = None) -> list[dict[str, Any]]:
        """Failed (dead-letter) jobs with their errors, newest first (only those of ``kind`` when given)."""
        stmt = select(Job).where(Job.state == "failed")
        if kind is not None:
            stmt = stmt.where(Job.kind == kind)
        with self.db.read_session() as session:
            jobs = session.execute(stmt.order_by(Job.id.desc()).limit(limit)).scalars()
            return [
                {
                    "id": j.id,
                    "kind": j.kind,
                    "attempts": j.attempts,
                    "last_error": j.last_error,
                    "payload": dict(j.payload),
                }
                for j in jobs
            ]
