"""A score job whose worker died on its last attempt still settles its ECG (issue 16, item 3).

The worker's ``on_dead_letter`` callback settles an ECG whose score job it sent to the dead letter; these tests
cover the other path: the worker is killed while it holds the job on its last allowed attempt, and the
queue's lease sweep dead-letters the job with no worker left to call anything. On the embedded SQL engine
(SQLite) and on procrastinate (PostgreSQL) alike, the ECG must end "not evaluated: processing error" with its
SR, PDF and ORU delivered, and settling it again (a second sweep, a concurrent worker callback) must add no
second result and no second delivery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ecgcad.context import AppContext, make_queue
from ecgcad.db.models import Delivery, EcgRecord, Result
from ecgcad.db.session import Database
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.jobs.schedule import build_scheduler
from ecgcad.jobs.worker import Worker
from tests.helpers import drain
from tests.pipeline.conftest import (
    assert_processing_error_reported,
    fake_context,
    ingest_real,
    pipeline_worker,
    reports_of,
)

LEASE_S = 1.0


@pytest.fixture(params=["sqlite", "postgres"])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AppContext]:
    """test_flow's context (fake model, PACS and EHR) with one attempt per job and a short lease, on the
    embedded SQL engine (SQLite) or on procrastinate (PostgreSQL)."""
    database_url = ""
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_server").create_database()
    context = fake_context(tmp_path / "var", database_url=database_url, lease_s=LEASE_S, max_attempts=1)
    yield context
    context.close()


def _worker_dies_holding_the_score_job(ctx: AppContext) -> int:
    """Claim the ECG's score job from another "process" (its own database and queue objects) on its last
    attempt, then drop it as SIGKILL would: no completion, no retry, no heartbeat, no unregistering."""
    doomed_db = Database(ctx.settings.effective_database_url)
    doomed_queue = make_queue(ctx.settings, doomed_db)
    (job,) = doomed_queue.claim(["score"], 1, "doomed-worker")
    assert job.attempts == job.max_attempts == 1, "the claim is the job's last allowed attempt"
    doomed_db.dispose()
    return job.id


def _run_until_dead_lettered(ctx: AppContext, worker: Worker, job_id: int) -> None:
    """Run the surviving worker until the queue's lease sweep has sent the job to the dead letter."""
    deadline = time.monotonic() + 10 * LEASE_S + 20
    while ctx.queue.get(job_id)["state"] != "failed":  # type: ignore[index]
        assert time.monotonic() < deadline, f"the job never reached the dead letter: {ctx.queue.get(job_id)}"
        worker.run_once()
        time.sleep(0.1)


def _run_every_scheduled_job_once(ctx: AppContext) -> None:
    """One tick of everything the scheduler runs (it only enqueues, or sweeps leases)."""
    schedule = build_scheduler(ctx)
    for job in schedule.scheduler.get_jobs():
        job.func(*job.args)


def _counts(ctx: AppContext, ecg_id: int) -> tuple[int, int]:
    with ctx.db.read_session() as s:
        results = s.execute(select(func.count()).where(Result.ecg_id == ecg_id)).scalar_one()
        deliveries = s.execute(
            select(func.count()).select_from(Delivery).join(Result).where(Result.ecg_id == ecg_id)
        ).scalar_one()
    return int(results), int(deliveries)


def test_score_job_whose_worker_died_on_the_last_attempt_makes_the_ecg_not_evaluated(
    ctx: AppContext,
) -> None:
    """Before: the lease sweep dead-lettered the job without the worker, and the ECG stayed ``queued``
    forever, with no report."""
    ecg_id = ingest_real(ctx)
    job_id = _worker_dies_holding_the_score_job(ctx)
    worker = pipeline_worker(ctx)
    _run_until_dead_lettered(ctx, worker, job_id)

    _run_every_scheduled_job_once(ctx)
    drain(ctx, worker)

    with ctx.db.read_session() as s:
        state = s.get(EcgRecord, ecg_id).state  # type: ignore[union-attr]
    assert state == "not_evaluated", f"the ECG of the dead score job is {state!r}"
    assert_processing_error_reported(ctx, ecg_id)
    assert ctx.queue.get(job_id)["state"] == "failed", "the job stays in the dead letter"  # type: ignore[index]


def test_settling_a_dead_score_job_again_adds_no_result_and_no_delivery(ctx: AppContext) -> None:
    """A second sweep and two concurrent worker callbacks after the first settlement change nothing."""
    from ecgcad.pipeline.dead_letter import sweep_dead_score_jobs
    from ecgcad.pipeline.scoring import settle_dead_score_job

    ecg_id = ingest_real(ctx)
    job_id = _worker_dies_holding_the_score_job(ctx)
    worker = pipeline_worker(ctx)
    _run_until_dead_lettered(ctx, worker, job_id)
    dead = ClaimedJob(job_id, "score", {"ecg_id": ecg_id}, 1, 1)

    # Two settlers at once (the worker's callback and the sweep): one result, one set of deliveries.
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def settle() -> None:
        try:
            barrier.wait(10)
            settle_dead_score_job(ctx, dead, RuntimeError("lost"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=settle) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert _counts(ctx, ecg_id) == (1, 3)

    assert sweep_dead_score_jobs(ctx) == 0, "nothing is left waiting"
    drain(ctx, worker)
    assert _counts(ctx, ecg_id) == (1, 3)
    _, received = reports_of(ctx, ecg_id)
    assert {kind: state for kind, (state, _) in received.items()} == {
        "sr": "sent",
        "pdf": "sent",
        "oru": "sent",
    }
    sent: Any = ctx.senders  # type: ignore[attr-defined]
    assert len(sent["pacs"].delivered) == 2 and len(sent["ehr"].delivered) == 1
