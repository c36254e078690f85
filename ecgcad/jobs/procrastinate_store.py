"""Where :class:`~ecgcad.jobs.procrastinate_queue.ProcrastinateJobQueue` keeps its jobs: two stores, one shape.

* :class:`PostgresStore` — procrastinate's own schema and SQL functions on the service's PostgreSQL database
  (``procrastinate_defer_jobs_v1``, ``procrastinate_fetch_job_v2``, ``procrastinate_finish_job_v1``,
  ``procrastinate_retry_job_v2``, the worker heartbeat functions), called through procrastinate's named
  queries (:data:`procrastinate.sql.queries`). Enqueue runs on the caller's SQLAlchemy session connection,
  so the job commits or rolls back with the caller's rows.
* :class:`InMemoryStore` — procrastinate's :class:`~procrastinate.testing.InMemoryConnector` (tests and
  integrators). It has no transactions of its own: a job deferred in a session stays invisible (scheduled at
  the end of time) until that session commits and is removed if it rolls back.

A job row is procrastinate's: ``id, queue_name, task_name, priority, args, status, scheduled_at, attempts,
worker_id`` plus ``deferred_at``. ecgcad keeps its own fields in ``args``: ``payload``, ``max_attempts``,
``dedupe_key`` and ``last_error``.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import TYPE_CHECKING, Any, Protocol

from procrastinate import sql as procrastinate_sql
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from procrastinate.testing import InMemoryConnector

Row = dict[str, Any]

#: Unique expression index that makes ``dedupe_key`` permanent (procrastinate's ``queueing_lock`` only
#: holds while a job waits). Installed with procrastinate's schema by :meth:`PostgresStore.install_schema`.
DEDUPE_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS ecgcad_procrastinate_jobs_dedupe_key "
    "ON procrastinate_jobs ((args->>'dedupe_key')) WHERE args ? 'dedupe_key'"
)
_SCHEMA_LOCK_KEY = 0x0EC6CAD  # pg_advisory_xact_lock key serialising concurrent schema installs

_DEFER_SQL = text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue_name, :task_name, :priority, NULL, NULL, "
    "CAST(:args AS jsonb), :scheduled_at)::procrastinate_job_to_defer_v1])) AS id"
)
_GET_SQL = (
    "SELECT j.id, j.queue_name, j.task_name, j.priority, j.args, j.status::text AS status, j.scheduled_at, "
    "j.attempts, j.worker_id, (SELECT min(e.at) FROM procrastinate_events e "
    "WHERE e.job_id = j.id AND e.type = 'deferred') AS deferred_at "
    "FROM procrastinate_jobs j WHERE j.id = %(job_id)s"
)
_OLDEST_TODO_SQL = (
    "SELECT min(e.at) FROM procrastinate_events e WHERE e.type = 'deferred' AND e.job_id = "
    "(SELECT min(id) FROM procrastinate_jobs WHERE status = 'todo')"
)
_SET_ERROR_SQL = (
    "UPDATE procrastinate_jobs SET args = args || jsonb_build_object('last_error', %(error)s::text) "
    "WHERE id = %(job_id)s"
)
_RESET_ATTEMPTS_SQL = "UPDATE procrastinate_jobs SET attempts = 0 WHERE id = %(job_id)s"
_FAILED_SQL = (
    "SELECT id, task_name, attempts, args FROM procrastinate_jobs WHERE status = 'failed' "
    "AND (%(task_name)s::text IS NULL OR task_name = %(task_name)s::text) ORDER BY id DESC LIMIT %(limit)s"
)

FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


class JobStore(Protocol):
    """The operations the queue needs, on procrastinate's job model."""

    def defer(self, session: Session, job: Row) -> int | None:
        """Insert ``job`` in the caller's transaction; ``None`` when its ``dedupe_key`` exists."""
        ...

    def fetch(self, queues: list[str], worker_id: int) -> Row | None:
        """Take the next runnable job of ``queues`` for ``worker_id`` (status ``todo`` → ``doing``)."""
        ...

    def finish(self, job_id: int, status: str) -> None:
        """``doing`` → ``succeeded`` or ``failed``."""
        ...

    def retry(self, job_id: int, retry_at: dt.datetime) -> None:
        """``doing`` or ``failed`` → ``todo`` at ``retry_at``."""
        ...

    def set_error(self, job_id: int, error: str) -> None:
        """Record the last error in the job's args."""
        ...

    def reset_attempts(self, job_id: int) -> None:
        """Set attempts back to 0 (operator retry)."""
        ...

    def stalled(self, seconds_since_heartbeat: float) -> list[Row]:
        """Running jobs whose worker is gone or has not sent a heartbeat for that long."""
        ...

    def register_worker(self) -> int:
        """A new procrastinate worker id."""
        ...

    def heartbeat(self, worker_ids: list[int]) -> None:
        """Refresh the heartbeat of these workers."""
        ...

    def unregister_worker(self, worker_id: int) -> None:
        """Forget a worker (its running jobs become stalled)."""
        ...

    def prune_workers(self, seconds_since_heartbeat: float) -> None:
        """Delete workers silent for that long."""
        ...

    def status_counts(self) -> dict[str, int]:
        """Jobs per procrastinate status."""
        ...

    def oldest_todo(self) -> dt.datetime | None:
        """When the oldest waiting job was deferred."""
        ...

    def get(self, job_id: int) -> Row | None:
        """One job row, or ``None``."""
        ...

    def failed(self, limit: int, task_name: str | None = None) -> list[Row]:
        """Failed jobs (of ``task_name`` when given), newest first."""
        ...


class PostgresStore:
    """procrastinate's schema and SQL functions on the service's PostgreSQL database.

    Parameters
    ----------
    engine:
        The service's SQLAlchemy engine (``postgresql+psycopg``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- schema ------------------------------------------------------------------------------------------
    def install_schema(self) -> bool:
        """Apply procrastinate's schema (and ecgcad's dedupe index) unless present; return True if applied."""
        from procrastinate.schema import SchemaManager

        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            cur.execute("SELECT to_regclass('procrastinate_jobs')")
            row = cur.fetchone()
            applied = row is None or row[0] is None
            if applied:
                cur.execute(SchemaManager.get_schema())
            cur.execute(DEDUPE_INDEX)
            raw.commit()
            return applied
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

    # -- helpers -----------------------------------------------------------------------------------------
    def _one(self, query: str, **params: object) -> Row | None:
        with self.engine.begin() as conn:
            result = conn.exec_driver_sql(query, params)
            row = result.mappings().first() if result.returns_rows else None
            return dict(row) if row is not None else None

    def _all(self, query: str, **params: object) -> list[Row]:
        with self.engine.begin() as conn:
            return [dict(r) for r in conn.exec_driver_sql(query, params).mappings()]

    # -- jobs --------------------------------------------------------------------------------------------
    def defer(self, session: Session, job: Row) -> int | None:
        params = {
            "queue_name": job["queue_name"],
            "task_name": job["task_name"],
            "priority": job["priority"],
            "args": json.dumps(job["args"]),
            "scheduled_at": job["scheduled_at"],
        }
        if "dedupe_key" not in job["args"]:
            return int(session.execute(_DEFER_SQL, params).scalar_one())
        try:
            # A savepoint: a duplicate must not abort the caller's transaction.
            with session.begin_nested():
                return int(session.execute(_DEFER_SQL, params).scalar_one())
        except IntegrityError as exc:
            if "ecgcad_procrastinate_jobs_dedupe_key" not in str(exc.orig):
                raise
            return None

    def fetch(self, queues: list[str], worker_id: int) -> Row | None:
        row = self._one(procrastinate_sql.queries["fetch_job"], queues=queues, worker_id=worker_id)
        return row if row is not None and row.get("id") is not None else None

    def finish(self, job_id: int, status: str) -> None:
        self._one(procrastinate_sql.queries["finish_job"], job_id=job_id, status=status, delete_job=False)

    def retry(self, job_id: int, retry_at: dt.datetime) -> None:
        self._one(
            procrastinate_sql.queries["retry_job"],
            job_id=job_id,
            retry_at=retry_at,
            new_priority=None,
            new_queue_name=None,
            new_lock=None,
        )

    def set_error(self, job_id: int, error: str) -> None:
        self._one(_SET_ERROR_SQL, job_id=job_id, error=error)

    def reset_attempts(self, job_id: int) -> None:
        self._one(_RESET_ATTEMPTS_SQL, job_id=job_id)

    def stalled(self, seconds_since_heartbeat: float) -> list[Row]:
        return self._all(
            procrastinate_sql.queries["select_stalled_jobs_by_heartbeat"],
            queue=None,
            task_name=None,
            seconds_since_heartbeat=seconds_since_heartbeat,
        )

    def register_worker(self) -> int:
        row = self._one(procrastinate_sql.queries["register_worker"])
        assert row is not None
        return int(row["worker_id"])

    def heartbeat(self, worker_ids: list[int]) -> None:
        with self.engine.begin() as conn:
            for worker_id in worker_ids:
                conn.exec_driver_sql(procrastinate_sql.queries["update_heartbeat"], {"worker_id": worker_id})

    def unregister_worker(self, worker_id: int) -> None:
        self._one(procrastinate_sql.queries["unregister_worker"], worker_id=worker_id)

    def prune_workers(self, seconds_since_heartbeat: float) -> None:
        self._all(
            procrastinate_sql.queries["prune_stalled_workers"],
            seconds_since_heartbeat=seconds_since_heartbeat,
        )

    def status_counts(self) -> dict[str, int]:
        rows = self._all(procrastinate_sql.queries["count_jobs_status"])
        return {str(r["status"]): int(r["count"]) for r in rows}

    def oldest_todo(self) -> dt.datetime | None:
        with self.engine.begin() as conn:
            value = conn.exec_driver_sql(_OLDEST_TODO_SQL).scalar()
        return value  # type: ignore[no-any-return]

    def get(self, job_id: int) -> Row | None:
        return self._one(_GET_SQL, job_id=job_id)

    def failed(self, limit: int, task_name: str | None = None) -> list[Row]:
        return self._all(_FAILED_SQL, limit=limit, task_name=task_name)


class InMemoryStore:
    """procrastinate's ``InMemoryConnector``, made transactional by following the caller's session.

    Parameters
    ----------
    connector:
        An :class:`procrastinate.testing.InMemoryConnector` (a new one when omitted).
    """

    def __init__(self, connector: InMemoryConnector | None = None) -> None:
        from procrastinate.testing import InMemoryConnector

        self.connector = connector if connector is not None else InMemoryConnector()
        self._lock = threading.RLock()
        self._dedupe: dict[str, int] = {}

    def _call(self, name: str, **kwargs: object) -> Any:  # noqa: ANN401 - what the connector method named returns
        from procrastinate import utils

        with self._lock:
            return utils.async_to_sync(getattr(self.connector, name), **kwargs)

    def defer(self, session: Session, job: Row) -> int | None:
        from procrastinate import types

        key = job["args"].get("dedupe_key")
        with self._lock:
            if key is not None and key in self._dedupe:
                return None
            # Invisible until the session commits: scheduled at the end of time.
            (row,) = self._call(
                "defer_jobs_all",
                jobs=[
                    types.JobToDefer(
                        queue_name=job["queue_name"],
                        task_name=job["task_name"],
                        priority=job["priority"],
                        lock=None,
                        queueing_lock=None,
                        args=job["args"],
                        scheduled_at=FAR_FUTURE,
                    )
                ],
            )
            job_id = int(row["id"])
            if key is not None:
                self._dedupe[key] = job_id
        pending: list[tuple[int, dt.datetime | None]] = session.info.setdefault("ecgcad_inmemory_jobs", [])
        if not session.info.get("ecgcad_inmemory_hooked"):
            session.info["ecgcad_inmemory_hooked"] = True
            event.listen(session, "after_commit", self._on_commit)
            event.listen(session, "after_rollback", self._on_rollback)
        pending.append((job_id, job["scheduled_at"]))
        return job_id

    def _on_commit(self, session: Session) -> None:
        with self._lock:
            for job_id, scheduled_at in session.info.pop("ecgcad_inmemory_jobs", []):
                self.connector.jobs[job_id]["scheduled_at"] = scheduled_at

    def _on_rollback(self, session: Session) -> None:
        with self._lock:
            for job_id, _ in session.info.pop("ecgcad_inmemory_jobs", []):
                row = self.connector.jobs.pop(job_id, None)
                key = (row or {}).get("args", {}).get("dedupe_key")
                if key is not None:
                    self._dedupe.pop(key, None)

    def fetch(self, queues: list[str], worker_id: int) -> Row | None:
        row = self._call("fetch_job_one", queues=queues, worker_id=worker_id)
        return dict(row) if row.get("id") is not None else None

    def finish(self, job_id: int, status: str) -> None:
        with self._lock:
            if self.connector.jobs[job_id]["status"] not in ("todo", "doing"):
                raise RuntimeError(f"job {job_id} is not in todo or doing status")
            self._call("finish_job_run", job_id=job_id, status=status, delete_job=False)

    def retry(self, job_id: int, retry_at: dt.datetime) -> None:
        with self._lock:
            if self.connector.jobs[job_id]["status"] not in ("doing", "failed"):
                raise RuntimeError(f"job {job_id} has an invalid status to retry")
            self._call("retry_job_run", job_id=job_id, retry_at=retry_at)

    def set_error(self, job_id: int, error: str) -> None:
        with self._lock:
            self.connector.jobs[job_id]["args"] = {**self.connector.jobs[job_id]["args"], "last_error": error}

    def reset_attempts(self, job_id: int) -> None:
        with self._lock:
            self.connector.jobs[job_id]["attempts"] = 0

    def stalled(self, seconds_since_heartbeat: float) -> list[Row]:
        rows = self._call(
            "select_stalled_jobs_by_heartbeat_all",
            queue=None,
            task_name=None,
            seconds_since_heartbeat=seconds_since_heartbeat,
        )
        with self._lock:
            return [dict(r) for r in list(rows)]

    def register_worker(self) -> int:
        return int(self._call("register_worker_one")["worker_id"])

    def heartbeat(self, worker_ids: list[int]) -> None:
        for worker_id in worker_ids:
            self._call("update_heartbeat_run", worker_id=worker_id)

    def unregister_worker(self, worker_id: int) -> None:
        self._call("unregister_worker_run", worker_id=worker_id)

    def prune_workers(self, seconds_since_heartbeat: float) -> None:
        self._call("prune_stalled_workers_all", seconds_since_heartbeat=seconds_since_heartbeat)

    def status_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for row in self.connector.jobs.values():
                if row["status"] == "todo" and row["scheduled_at"] == FAR_FUTURE:
                    continue  # not committed yet
                out[row["status"]] = out.get(row["status"], 0) + 1
        return out

    def _deferred_at(self, job_id: int) -> dt.datetime | None:
        times = [e["at"] for e in self.connector.events.get(job_id, []) if e["type"] == "deferred"]
        return min(times) if times else None

    def oldest_todo(self) -> dt.datetime | None:
        with self._lock:
            todo = [
                j["id"]
                for j in self.connector.jobs.values()
                if j["status"] == "todo" and j["scheduled_at"] != FAR_FUTURE
            ]
            return self._deferred_at(min(todo)) if todo else None

    def get(self, job_id: int) -> Row | None:
        with self._lock:
            row = self.connector.jobs.get(job_id)
            if row is None or (row["status"] == "todo" and row["scheduled_at"] == FAR_FUTURE):
                return None
            return {**row, "deferred_at": self._deferred_at(job_id)}

    def failed(self, limit: int, task_name: str | None = None) -> list[Row]:
        with self._lock:
            rows = [
                dict(j)
                for j in self.connector.jobs.values()
                if j["status"] == "failed" and task_name in (None, j["task_name"])
            ]
        return sorted(rows, key=lambda r: -int(r["id"]))[:limit]
