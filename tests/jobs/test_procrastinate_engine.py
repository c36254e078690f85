"""What is specific to the procrastinate engine: selection, its tables, schema install, worker heartbeats."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from ecgcad.config import load_settings
from ecgcad.context import make_queue
from ecgcad.db.migrate import upgrade
from ecgcad.db.models import SourceObject
from ecgcad.db.session import Database
from ecgcad.jobs.procrastinate_queue import ProcrastinateJobQueue
from ecgcad.jobs.procrastinate_store import PostgresStore
from ecgcad.jobs.queue import SqlJobQueue


@pytest.fixture
def pg(postgres_server: object) -> Iterator[Database]:
    url = postgres_server.create_database()  # type: ignore[attr-defined]
    upgrade(url)
    db = Database(url)
    yield db
    db.dispose()


def test_auto_engine_is_procrastinate_on_postgresql_and_sql_on_sqlite(pg: Database, tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=str(tmp_path), database_url=pg.url)
    assert isinstance(make_queue(settings, pg), ProcrastinateJobQueue)
    forced = load_settings(None, data_dir=str(tmp_path), database_url=pg.url, queue={"engine": "sql"})
    assert isinstance(make_queue(forced, pg), SqlJobQueue)
    lite = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(make_queue(load_settings(None, data_dir=str(tmp_path)), lite), SqlJobQueue)
    lite.dispose()


def test_jobs_live_in_procrastinate_tables_and_roll_back_with_the_caller(pg: Database) -> None:
    q = ProcrastinateJobQueue(pg)
    with pytest.raises(RuntimeError):
        with pg.session() as s:
            obj = SourceObject(sha256="c" * 64, size=1, storage_path="x", kind="file")
            s.add(obj)
            s.flush()
            q.defer(s, "decode", {"source_object_id": obj.id}, dedupe_key="decode:src:x")
            raise RuntimeError
    with pg.session() as s:
        job_id = q.defer(s, "decode", {"source_object_id": 1}, dedupe_key="decode:src:x")
        assert job_id is not None, "the rolled-back dedupe key is free again"
    with pg.engine.connect() as conn:
        rows = conn.execute(text("SELECT task_name, status::text, args FROM procrastinate_jobs")).all()
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
    assert rows == [
        (
            "decode",
            "todo",
            {"payload": {"source_object_id": 1}, "max_attempts": 5, "dedupe_key": "decode:src:x"},
        )
    ]


def test_schema_install_is_idempotent(pg: Database) -> None:
    store = PostgresStore(pg.engine)
    assert store.install_schema() is True
    assert store.install_schema() is False


def test_dedupe_key_stays_taken_after_the_job_is_done(pg: Database) -> None:
    q = ProcrastinateJobQueue(pg)
    with pg.session() as s:
        q.defer(s, "retention", {"period": 1}, dedupe_key="sched:retention:1")
    (job,) = q.claim(["retention"], 1, "w")
    q.complete(job.id)
    with pg.session() as s:
        assert q.defer(s, "retention", {"period": 1}, dedupe_key="sched:retention:1") is None


def test_closing_a_queue_unregisters_its_workers_so_their_jobs_are_stalled_at_once(pg: Database) -> None:
    q = ProcrastinateJobQueue(pg, lease_s=3600)
    with pg.session() as s:
        job_id = q.defer(s, "score", {"ecg_id": 1})
    q.claim(["score"], 1, "w")
    q.close()
    other = ProcrastinateJobQueue(pg, lease_s=3600)
    assert other.requeue_stalled() == 1
    (again,) = other.claim(["score"], 1, "w2")
    assert again.id == job_id and again.attempts == 2
