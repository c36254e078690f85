"""The test kit every test module shares: contexts, draining the queue, counting rows, servers and processes.

- :func:`settings_for` / :func:`make_ctx`: embedded settings under a folder (keyword overrides merged into
  the sections) and a migrated :class:`~ecgcad.context.AppContext` on them, optionally with a predictor.
- :func:`drain`: run a worker in this thread until the queue is empty.
- :func:`count_rows`: ``SELECT count(*)`` of a model, with optional conditions.
- :func:`running_server`: start a component (SCP, MLLP server, API), yield it, stop it.
- :func:`stop_process`: SIGTERM a child process, then SIGKILL if it does not stop.

Peers (dcmtk, Orthanc, PostgreSQL) are in ``tests/peers.py`` and ``tests/pg.py``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import func, select

from ecgcad.config import Settings, load_settings
from ecgcad.context import AppContext
from ecgcad.db.migrate import upgrade
from ecgcad.db.session import Database
from ecgcad.jobs.worker import Worker
from ecgcad.model.predictor import Predictor


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    """Embedded settings under ``data_dir``; a dict override is merged into its section, others replace."""
    base: dict[str, Any] = {"data_dir": str(data_dir)}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(None, **base)


def make_ctx(
    data_dir: Path | None = None,
    *,
    settings: Settings | None = None,
    predictor: Predictor | None = None,
    **overrides: Any,
) -> AppContext:
    """A migrated embedded context on ``settings`` (or :func:`settings_for` of ``data_dir`` and overrides).

    The caller closes it (``ctx.close()``), or uses a fixture that does.
    """
    if settings is None:
        if data_dir is None:
            raise TypeError("make_ctx needs data_dir or settings")
        settings = settings_for(data_dir, **overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    ctx = AppContext.from_settings(settings)
    if predictor is not None:
        ctx.set_predictor(predictor)
    return ctx


def drain(ctx: AppContext, worker: Worker | None = None, *, timeout: float = 60.0) -> None:
    """Run ``worker`` (default: one with every pipeline handler) in this thread until the queue is empty."""
    if worker is None:
        from ecgcad.pipeline.handlers import register_handlers

        worker = Worker(ctx.queue)
        register_handlers(ctx, worker)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.run_once()
        counts = ctx.queue.counts()
        if counts["queued"] == 0 and counts["running"] == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"queue did not drain: {ctx.queue.counts()}")


def count_rows(db: AppContext | Database, model: Any, *where: Any) -> int:
    """The number of ``model`` rows (matching ``where``) in ``db`` (a database or a context's)."""
    database = db.db if isinstance(db, AppContext) else db
    with database.read_session() as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


class _Component(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


C = TypeVar("C", bound=_Component)


@contextmanager
def running_server(component: C) -> Iterator[C]:
    """Start ``component`` (anything with ``start``/``stop``), yield it, and stop it however the block ends."""
    component.start()
    try:
        yield component
    finally:
        component.stop()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM ``proc`` and wait; SIGKILL it if it has not stopped within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
