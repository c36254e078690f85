"""The JobQueue contract: every engine must pass this suite.

Engines (the ``queue`` fixture's params): the embedded SQL engine on SQLite and on PostgreSQL, procrastinate
on its ``InMemoryConnector`` (sessions from an embedded SQLite) and procrastinate on the real PostgreSQL
server of the ``postgres_server`` fixture. An engine joins by extending the params and :func:`_queue_source`.

Not run on procrastinate's ``InMemoryConnector``: the killed-worker-process test — its jobs live in one
process's memory, so there is no second process that could claim and die.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from ecgcad.db.migrate import upgrade
from ecgcad.db.models import Job, SourceObject
from ecgcad.errors import PermanentDeliveryError
from ecgcad.jobs.queue import JobQueue, SqlJobQueue
from ecgcad.jobs.worker import Worker

ENGINES = ["sql-sqlite", "sql-postgres", "procrastinate-memory", "procrastinate-postgres"]
QUEUE_KW = "lease_s=1.0, max_attempts=3, backoff=BackoffPolicy(base_s=0.2, maximum_s=1.0, jitter=0.0)"


def _queue_source(engine: str, url: str) -> str:
    """Python source building ``q``, the engine under test on ``url`` (also used in subprocesses)."""
    cls = "SqlJobQueue" if engine.startswith("sql") else "ProcrastinateJobQueue"
    build = "ProcrastinateJobQueue.in_memory" if engine == "procrastinate-memory" else cls
    return (
        "from ecgcad.db.session import Database\n"
        "from ecgcad.jobs.queue import BackoffPolicy, SqlJobQueue\n"
        "from ecgcad.jobs.procrastinate_queue import ProcrastinateJobQueue\n"
        f"q = {build}(Database({url!r}), {QUEUE_KW})\n"
    )


@pytest.fixture(params=ENGINES)
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlJobQueue]:
    engine: str = request.param
    if engine.endswith("postgres"):
        url = request.getfixturevalue("postgres_server").create_database()
    else:
        url = f"sqlite:///{tmp_path / 'ecgcad.db'}"
    upgrade(url)
    namespace: dict[str, object] = {}
    exec(_queue_source(engine, url), namespace)  # noqa: S102 - our own source, shared with subprocesses
    q = namespace["q"]
    q.engine_name = engine  # type: ignore[attr-defined]
    yield q  # type: ignore[misc]
    close = getattr(q, "close", None)
    if close is not None:
        close()
    q.db.dispose()  # type: ignore[attr-defined]


def _defer(q: SqlJobQueue, kind: str = "score", payload: dict | None = None, **kw: object) -> int | None:
    with q.db.session() as s:
        return q.defer(s, kind, payload or {"ecg_id": 1}, **kw)  # type: ignore[arg-type]


def test_engine_implements_the_protocol(queue: SqlJobQueue) -> None:
    assert isinstance(queue, JobQueue)


def test_dedupe_key_makes_second_defer_a_no_op(queue: SqlJobQueue) -> None:
    first = _defer(queue, dedupe_key="score:ecg:1")
    second = _defer(queue, dedupe_key="score:ecg:1")
    assert first is not None and second is None
    assert queue.counts()["queued"] == 1


def test_enqueue_joins_the_callers_transaction(queue: SqlJobQueue) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with queue.db.session() as s:
            obj = SourceObject(sha256="a" * 64, size=1, storage_path="x", kind="file")
            s.add(obj)
            s.flush()
            queue.defer(s, "decode", {"source_object_id": obj.id})
            raise Boom
    with queue.db.session() as s:
        assert s.execute(select(Job)).first() is None
        assert s.execute(select(SourceObject)).first() is None
    assert queue.counts()["queued"] == 0


def test_committed_job_and_row_appear_together(queue: SqlJobQueue) -> None:
    with queue.db.session() as s:
        obj = SourceObject(sha256="b" * 64, size=1, storage_path="x", kind="file")
        s.add(obj)
        s.flush()
        job_id = queue.defer(s, "decode", {"source_object_id": obj.id})
    assert job_id is not None
    assert queue.get(job_id)["payload"] == {"source_object_id": obj.id}  # type: ignore[index]


def test_batch_claim_respects_limit_and_kind(queue: SqlJobQueue) -> None:
    for i in range(7):
        _defer(queue, "score", {"ecg_id": i})
    _defer(queue, "deliver", {"delivery_id": 1})
    first = queue.claim(["score"], 5, "w1")
    second = queue.claim(["score"], 5, "w1")
    third = queue.claim(["score"], 5, "w1")
    assert [len(first), len(second), len(third)] == [5, 2, 0]
    assert all(j.kind == "score" for j in first + second)
    assert len({j.id for j in first + second}) == 7
    assert queue.claim(["score"], 0, "w1") == []


def test_concurrent_claimers_never_share_a_job(queue: SqlJobQueue) -> None:
    for i in range(60):
        _defer(queue, "score", {"ecg_id": i})
    got: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while True:
            jobs = queue.claim(["score"], 4, name)
            if not jobs:
                return
            with lock:
                got.extend(j.id for j in jobs)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(got) == 60 and len(set(got)) == 60


def test_retry_with_exponential_backoff(queue: SqlJobQueue) -> None:
    job_id = _defer(queue)
    assert job_id is not None
    (job,) = queue.claim(["score"], 1, "w")
    before = dt.datetime.now(dt.UTC)
    assert queue.retry_later(job.id, "boom") == "queued"
    first_delay = (queue.get(job_id)["run_after"] - before).total_seconds()  # type: ignore[index]
    assert queue.claim(["score"], 1, "w") == [], "a job must not run again before its backoff"
    time.sleep(0.25)
    (job,) = queue.claim(["score"], 1, "w")
    before = dt.datetime.now(dt.UTC)
    queue.retry_later(job.id, "boom again")
    second_delay = (queue.get(job_id)["run_after"] - before).total_seconds()  # type: ignore[index]
    assert 0.15 < first_delay < 0.3
    assert 0.35 < second_delay < 0.5, "the second delay doubles"
    assert queue.get(job_id)["last_error"] == "boom again"  # type: ignore[index]


def test_dead_letter_after_max_attempts(queue: SqlJobQueue) -> None:
    job_id = _defer(queue, max_attempts=2)
    assert job_id is not None
    (job,) = queue.claim(["score"], 1, "w")
    assert queue.retry_later(job.id, "e1") == "queued"
    time.sleep(0.25)
    (job,) = queue.claim(["score"], 1, "w")
    assert queue.retry_later(job.id, "e2") == "failed"
    assert queue.get(job_id)["state"] == "failed"  # type: ignore[index]
    assert queue.get(job_id)["last_error"] == "e2"  # type: ignore[index]
    assert queue.claim(["score"], 1, "w") == []
    assert queue.counts()["failed"] == 1
    queue.retry(job_id)
    assert queue.get(job_id)["state"] == "queued"  # type: ignore[index]


def test_non_retryable_failure_goes_straight_to_dead_letter(queue: SqlJobQueue) -> None:
    _defer(queue)
    (job,) = queue.claim(["score"], 1, "w")
    assert queue.retry_later(job.id, "refused", retryable=False) == "failed"


def test_claim_of_a_killed_worker_process_becomes_claimable_again(queue: SqlJobQueue) -> None:
    if queue.engine_name == "procrastinate-memory":  # type: ignore[attr-defined]
        pytest.skip("InMemoryConnector jobs live in one process: no other process can claim them")
    job_id = _defer(queue)
    script = _queue_source(queue.engine_name, queue.db.url) + textwrap.dedent(  # type: ignore[attr-defined]
        """
        import time
        jobs = q.claim(["score"], 1, "doomed")
        print(len(jobs), flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "1"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert queue.claim(["score"], 1, "survivor") == [], "the lease still holds"
    deadline = time.monotonic() + 10
    claimed = []
    while not claimed and time.monotonic() < deadline:
        time.sleep(0.2)
        claimed = queue.claim(["score"], 1, "survivor")
    assert [j.id for j in claimed] == [job_id]
    assert claimed[0].attempts == 2


def test_requeue_stalled_makes_expired_leases_runnable(queue: SqlJobQueue) -> None:
    _defer(queue)
    queue.claim(["score"], 1, "w")
    time.sleep(1.1)
    assert queue.requeue_stalled() == 1
    assert queue.counts()["queued"] == 1


def test_lease_sweep_dead_letters_a_job_lost_on_its_last_attempt(queue: SqlJobQueue) -> None:
    """The lease sweep alone (no worker claiming that kind) sends a job whose worker died on its last
    attempt to the dead letter, where ``failed_jobs(kind=...)`` finds it for the dead-letter sweep."""
    job_id = _defer(queue, "score", {"ecg_id": 7}, max_attempts=1)
    _defer(queue, "deliver", {"delivery_id": 1})
    (refused,) = queue.claim(["deliver"], 1, "w")
    assert queue.retry_later(refused.id, "refused", retryable=False) == "failed"
    assert [j.id for j in queue.claim(["score"], 1, "doomed")] == [job_id]
    deadline = time.monotonic() + 10
    while queue.get(job_id)["state"] != "failed":  # type: ignore[index]
        assert time.monotonic() < deadline, f"never dead-lettered: {queue.get(job_id)}"
        time.sleep(0.1)
        assert queue.requeue_stalled() == 0, "a job on its last attempt is not re-queued"
    assert [(j["id"], j["payload"]) for j in queue.failed_jobs(kind="score")] == [(job_id, {"ecg_id": 7})]
    assert len(queue.failed_jobs()) == 2
    assert queue.claim(["score"], 1, "survivor") == []


def test_worker_runs_batches_and_marks_done_after_handler(queue: SqlJobQueue) -> None:
    for i in range(10):
        _defer(queue, "score", {"ecg_id": i})
    batches: list[int] = []

    def handler(jobs):  # type: ignore[no-untyped-def]
        batches.append(len(jobs))
        return {jobs[0].id: RuntimeError("first of batch fails")} if len(batches) == 1 else None

    worker = Worker(queue)
    worker.register("score", handler, batch_size=4, max_wait_ms=10)
    for _ in range(5):
        worker.run_once()
    assert batches[:3] == [4, 4, 2]
    counts = queue.counts()
    assert counts["done"] == 9 and counts["queued"] == 1


def test_worker_thread_stops_cleanly(queue: SqlJobQueue) -> None:
    done = threading.Event()

    def handler(jobs):  # type: ignore[no-untyped-def]
        done.set()

    worker = Worker(queue, idle_sleep_s=0.05)
    worker.register("score", handler)
    worker.start()
    _defer(queue)
    worker.wake()
    assert done.wait(10)
    worker.stop(10)
    assert not worker.alive
    deadline = time.monotonic() + 5
    while queue.counts()["done"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.counts()["done"] == 1


def test_worker_hands_each_dead_lettered_job_to_its_kind_once(queue: SqlJobQueue) -> None:
    """The common worker path of every engine: a job out of attempts (or refused for good) reaches the
    ``on_dead_letter`` callback once, with its last error, so its work gets a final state (issue 16)."""
    exhausted = _defer(queue, "score", {"ecg_id": 1}, max_attempts=2)
    refused = _defer(queue, "score", {"ecg_id": 2}, max_attempts=5)
    dead: list[tuple[int, int, str]] = []

    def handler(jobs):  # type: ignore[no-untyped-def]
        return {
            j.id: PermanentDeliveryError("refused") if j.payload["ecg_id"] == 2 else RuntimeError("boom")
            for j in jobs
        }

    worker = Worker(queue)
    worker.register(
        "score", handler, on_dead_letter=lambda job, error: dead.append((job.id, job.attempts, str(error)))
    )
    deadline = time.monotonic() + 10
    while queue.counts()["failed"] < 2 and time.monotonic() < deadline:
        if not worker.run_once():
            time.sleep(0.05)
    assert sorted(dead) == sorted([(exhausted, 2, "boom"), (refused, 1, "refused")])
    assert queue.counts()["failed"] == 2


def test_a_failing_dead_letter_callback_leaves_the_worker_running(queue: SqlJobQueue) -> None:
    _defer(queue, "score", {"ecg_id": 1}, max_attempts=1)
    _defer(queue, "decode", {"source_object_id": 1})
    ran: list[str] = []

    def broken(job, error):  # type: ignore[no-untyped-def]
        raise RuntimeError("callback bug")

    worker = Worker(queue)
    worker.register("score", lambda jobs: {j.id: RuntimeError("boom") for j in jobs}, on_dead_letter=broken)
    worker.register("decode", lambda jobs: ran.append("decode"))
    worker.run_once()
    assert ran == ["decode"] and queue.counts()["failed"] == 1
