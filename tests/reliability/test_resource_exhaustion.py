"""Resource exhaustion: disk under the reserve (a real, small tmpfs when we may mount one), the database
locked, PostgreSQL restarted mid-run, and a model that cannot load or runs out of memory.

Each proves: the listeners answer 0xA700 / AE while the resource is missing (never a silent drop, never an
acknowledgement for what is not stored), recover when it returns, and nothing acknowledged is lost; ECGs the
model cannot score stay queued (not "not evaluated"), and readiness reports the model failure.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import func, select

from ecgcad.context import AppContext
from ecgcad.db.models import EcgRecord, Result, SourceObject
from ecgcad.errors import CheckpointError
from ecgcad.listeners.dicom_scp import TWELVE_LEAD_ECG_WAVEFORM_STORAGE, DicomScp
from ecgcad.listeners.hl7_server import Hl7Server
from ecgcad.testing.fake_predictor import FakePredictor
from tests.helpers import make_ctx
from tests.listeners.conftest import make_settings
from tests.listeners.hl7util import SocketClient, msa, oru
from tests.peers import wait_for
from tests.reliability.harness import MllpResender, _template, figures, oru_messages, unique_ecg


def _ctx(data_dir: Path, **overrides: Any) -> AppContext:
    return make_ctx(settings=make_settings(data_dir, **overrides))


def _c_store(port: int, ds: pydicom.Dataset) -> int:
    ae = AE(ae_title="CART")
    ae.add_requested_context(TWELVE_LEAD_ECG_WAVEFORM_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def _hl7(port: int, cid: str) -> str:
    client = SocketClient(("127.0.0.1", port), timeout=30)
    try:
        return msa(client.send(oru(cid)))[1]
    finally:
        client.sock.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """A 24 MB tmpfs (root may mount one), else a plain folder whose free space the test fakes."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = (
        os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, timeout=10
        ).returncode
        == 0
    )
    try:
        yield mnt, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_disk_under_reserve_answers_a700_and_ae_then_recovers(
    small_disk: tuple[Path, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    mnt, mounted = small_disk
    ctx = _ctx(mnt / "var", queue={"min_free_disk_mb": 8})
    scp, hl7 = DicomScp(ctx), Hl7Server(ctx)
    scp.start()
    hl7.start()
    template = _template()
    filler = mnt / "filler"
    try:
        assert _c_store(scp.address[1], unique_ecg(template, 0, "DISK")) == 0
        assert _hl7(hl7.address[1], "DISK-OK-1") == "AA"
        # fill the disk to under the 8 MB reserve (really, on tmpfs; else fake the free-space reading)
        if mounted:
            free = shutil.disk_usage(mnt).free
            with filler.open("wb") as fh:
                fh.write(b"\0" * (free - 4 * 1024 * 1024))
        else:
            monkeypatch.setattr(ctx.store, "free_bytes", lambda: 4 * 1024 * 1024)
        refused_ds = unique_ecg(template, 1, "DISK")
        full_status = _c_store(scp.address[1], refused_ds)
        full_ack = _hl7(hl7.address[1], "DISK-FULL-1")
        with ctx.db.session() as s:
            stored_while_full = s.execute(
                select(func.count())
                .select_from(SourceObject)
                .where(
                    (SourceObject.sop_instance_uid == str(refused_ds.SOPInstanceUID))
                    | (SourceObject.message_control_id == "DISK-FULL-1")
                )
            ).scalar_one()
        # space returns: the senders' retries are stored
        if mounted:
            filler.unlink()
        else:
            monkeypatch.undo()
        retry_status = _c_store(scp.address[1], refused_ds)
        retry_ack = _hl7(hl7.address[1], "DISK-FULL-1")
        figures(
            "disk under reserve",
            real_tmpfs=mounted,
            faults_injected=1,
            full_dicom_status=hex(full_status),
            full_hl7_ack=full_ack,
            stored_while_full=stored_while_full,
            after_recovery=f"{hex(retry_status)}/{retry_ack}",
            lost=0 if retry_status == 0 and retry_ack == "AA" else 1,
        )
        assert full_status == 0xA700 and full_ack == "AE" and stored_while_full == 0
        assert retry_status == 0 and retry_ack == "AA"
    finally:
        scp.stop()
        hl7.stop()
        ctx.close()


def test_database_locked_gives_retryable_refusals_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ecgcad.db.session as session_mod

    # 0.5 s instead of 30 s: the lock below outlasts it, so the listener must refuse rather than hang
    monkeypatch.setattr(session_mod, "SQLITE_BUSY_TIMEOUT_MS", 500)
    ctx = _ctx(tmp_path / "var")
    hl7 = Hl7Server(ctx)
    hl7.start()
    messages = oru_messages(40, tag="LCK")  # enough that the sender is still busy when the lock is taken
    sender = MllpResender(hl7.address[1], messages, deadline_s=90)
    db_file = str(ctx.settings.effective_database_url).removeprefix("sqlite:///")
    lock = sqlite3.connect(db_file, timeout=5, isolation_level=None)
    try:
        sender.start()
        wait_for(lambda: len(sender.acked) >= 3, 30, "first messages", interval=0.002)
        lock.execute("BEGIN EXCLUSIVE")
        assert len(sender.acked) < len(messages), "the sender finished before the lock: nothing was tested"
        time.sleep(3.0)
        acked_while_locked = len(sender.acked)
        time.sleep(1.0)
        assert len(sender.acked) == acked_while_locked, "acknowledged while the database was locked"
        lock.execute("COMMIT")
        sender.join(60)
        with ctx.db.session() as s:
            by_cid = dict(
                s.execute(
                    select(SourceObject.message_control_id, func.count()).group_by(
                        SourceObject.message_control_id
                    )
                ).all()
            )
        figures(
            "database locked",
            sent=sender.sent,
            acknowledged=len(sender.acked),
            stored=sum(1 for cid, _ in messages if by_cid.get(cid) == 1),
            refusals=dict(sender.nacks),
            duplicates=sum(v - 1 for v in by_cid.values()),
            lost=len(messages) - sum(1 for cid, _ in messages if by_cid.get(cid)),
            faults_injected="exclusive lock 4 s",
        )
        assert len(sender.acked) == len(messages)
        assert all(by_cid.get(cid) == 1 for cid, _ in messages)
        assert sum(sender.nacks.values()) >= 1, "the lock was never noticed"
    finally:
        sender.stop_event.set()
        lock.close()
        hl7.stop()
        ctx.close()


@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_postgresql_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    from tests.pg import PostgresServer

    try:
        pg = PostgresServer()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"PostgreSQL not available: {exc}")
    ctx = None
    hl7 = None
    sender = None
    try:
        url = pg.create_database("rel")
        ctx = _ctx(tmp_path / "var", database_url=url, queue={"engine": "sql", "min_free_disk_mb": 0})
        hl7 = Hl7Server(ctx)
        hl7.start()
        messages = oru_messages(20, tag="PGR")
        sender = MllpResender(hl7.address[1], messages, deadline_s=120)
        sender.start()
        wait_for(lambda: len(sender.acked) >= 4, 60, "first messages")
        ctl = [str(pg.bindir / "pg_ctl"), "-D", str(pg.datadir)]
        pg._run([*ctl, "-m", "immediate", "stop"])
        time.sleep(1.5)
        pg._run(
            [*ctl, "-w", "-t", "60", "-l", str(pg.tmp / "log"), "-o",
             f"-p {pg.port} -k {pg.tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
             "start"]
        )  # fmt: skip
        sender.join(90)
        with ctx.db.session() as s:
            by_cid = dict(
                s.execute(
                    select(SourceObject.message_control_id, func.count()).group_by(
                        SourceObject.message_control_id
                    )
                ).all()
            )
        figures(
            "postgresql restarted",
            sent=sender.sent,
            acknowledged=len(sender.acked),
            stored=sum(1 for cid, _ in messages if by_cid.get(cid) == 1),
            refusals=dict(sender.nacks),
            duplicates=sum(v - 1 for v in by_cid.values()),
            lost=len(sender.acked) - sum(1 for cid in sender.acked if by_cid.get(cid)),
            faults_injected="pg_ctl stop -m immediate + start",
        )
        assert len(sender.acked) == len(messages)
        assert all(by_cid.get(cid) == 1 for cid, _ in messages)
    finally:
        if sender is not None:
            sender.stop_event.set()
        if hl7 is not None:
            hl7.stop()
        if ctx is not None:
            ctx.close()
        pg.stop()


# -- the model ------------------------------------------------------------------------------------------
def _scoring_ctx(tmp_path: Path, n: int) -> tuple[AppContext, Any]:
    from ecgcad.jobs.worker import Worker
    from ecgcad.pipeline.handlers import register_handlers

    ctx = _ctx(tmp_path / "var", queue={"backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 50})
    template = _template()
    from tests.reliability.harness import dicom_bytes

    for i in range(n):
        data = dicom_bytes(unique_ecg(template, i, "MDL"))
        from ecgcad.integration.formats.readers import decode

        ctx.ingestor.ingest_dicom(
            data,
            sop_class_uid=TWELVE_LEAD_ECG_WAVEFORM_STORAGE,
            sop_instance_uid=str(pydicom.dcmread(__import__("io").BytesIO(data)).SOPInstanceUID),
            ecg=decode(data),
            decode_error=None,
            calling_ae="CART",
            peer_address="127.0.0.1",
        )
    worker = Worker(ctx.queue)
    register_handlers(ctx, worker)
    return ctx, worker


def _states(ctx: AppContext) -> dict[str, int]:
    with ctx.db.session() as s:
        return dict(s.execute(select(EcgRecord.state, func.count()).group_by(EcgRecord.state)).all())


def _drain(worker: Any, until: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        if not worker.run_once():
            time.sleep(0.05)


def test_model_out_of_memory_halves_the_batch_and_scores_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, worker = _scoring_ctx(tmp_path, 8)
    oom = FakePredictor(max_batch=2)  # a batch over 2 raises ModelError, like a GPU out of memory
    ctx.set_predictor(oom)
    try:
        _drain(worker, lambda: _states(ctx).get("scored") == 8)
        with ctx.db.session() as s:
            results = s.execute(select(func.count()).select_from(Result)).scalar_one()
        halvings = [r.getMessage() for r in caplog.records if "retrying as" in r.getMessage()]
        figures(
            "model OOM",
            ecgs=8,
            faults_injected=len(halvings),
            successful_batches=oom.calls,
            scored=_states(ctx).get("scored"),
            results=results,
            lost=8 - results,
        )
        assert _states(ctx) == {"scored": 8} and results == 8
        assert oom.calls == [2, 2, 2, 2] and any("batch of 8" in h for h in halvings), (oom.calls, halvings)
    finally:
        ctx.close()


def test_model_that_cannot_load_keeps_ecgs_queued_and_readiness_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecgcad.api.app import readiness

    ctx, worker = _scoring_ctx(tmp_path, 4)
    loads = []

    def broken() -> Any:
        loads.append(time.monotonic())
        raise CheckpointError("checkpoint unreadable (test)")

    monkeypatch.setattr(ctx, "get_predictor", broken)
    try:
        _drain(worker, lambda: len(loads) >= 3, timeout=20)
        states = _states(ctx)
        ok, checks = readiness(ctx)
        counts = ctx.queue.counts()
        assert "scored" not in states and "not_evaluated" not in states, states
        assert counts.get("failed", 0) == 0 and counts.get("queued", 0) >= 1, counts
        assert checks["model_error"] and "CheckpointError" in checks["model_error"]
        # the model comes back: the queued ECGs are scored and readiness clears
        monkeypatch.undo()
        ctx.set_predictor(FakePredictor())
        _drain(worker, lambda: _states(ctx).get("scored") == 4)
        figures(
            "model cannot load",
            ecgs=4,
            load_attempts=len(loads),
            states_while_broken=states,
            queue_while_broken=counts,
            readiness_while_broken=checks["model_error"],
            scored_after=_states(ctx).get("scored"),
            lost=4 - (_states(ctx).get("scored") or 0),
        )
        assert _states(ctx) == {"scored": 4}
        assert readiness(ctx)[1]["model_error"] is None
    finally:
        ctx.close()


def test_hl7_sender_thread_is_bounded() -> None:
    """The harness's sender gives up at its deadline (so a broken server cannot hang the suite)."""
    sender = MllpResender(1, [("X", b"MSH|^~\\&|A")], deadline_s=0.5)
    t0 = time.monotonic()
    sender.start()
    sender.join(5)
    assert not sender.is_alive() and time.monotonic() - t0 < 5
    assert threading.active_count() >= 1
