"""Scale-out on PostgreSQL: one listener process, two worker processes, ECGs sent by ``storescu``, one
worker SIGKILLed mid-way. Every ECG ends with exactly one result per model version, every delivery row is
``sent`` once, and both peers (dcmtk ``storescp``, an MLLP sink) have every object.

The default run sends :data:`N_DEFAULT` ECGs; the ``slow`` variant sends 500.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from ecgcad.db.migrate import upgrade
from ecgcad.db.models import Delivery, EcgRecord, Result
from ecgcad.db.session import Database
from tests.helpers import stop_process
from tests.peers import MllpSink, StoreScp, free_port, require, wait_port
from tests.scaleout.conftest import ecg_copies

pytestmark = [pytest.mark.postgres, pytest.mark.peers]

N_DEFAULT = 40
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _config(tmp: Path, url: str, dicom_port: int, scp: StoreScp, sink: MllpSink) -> Path:
    cfg = tmp / "ecgcad.toml"
    cfg.write_text(
        f"""
data_dir = "{tmp / "shared"}"
database_url = "{url}"
log_level = "INFO"

[dicom]
port = {dicom_port}
network_timeout_s = 30

[hl7]
port = {free_port()}

[api]
enabled = false

[model]
device = "cpu"
max_batch = 8
max_wait_ms = 20

[queue]
engine = "procrastinate"
lease_s = 10
backoff_base_s = 0.5
backoff_max_s = 2
min_free_disk_mb = 0

[[destinations]]
name = "pacs"
kind = "dicom"
port = {scp.port}
ae_title = "PACS"
send = ["sr"]

[[destinations]]
name = "ehr"
kind = "hl7"
port = {sink.port}
"""
    )
    return cfg


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    fh = open(log, "wb")  # noqa: SIM115 - the child holds it; closed when the test's tmp dir goes
    return subprocess.Popen([sys.executable, "-m", "ecgcad", *args], stdout=fh, stderr=subprocess.STDOUT)


def _counts(db: Database) -> tuple[int, int, int]:
    with db.session() as s:
        results = s.execute(select(func.count()).select_from(Result)).scalar_one()
        sent = s.execute(
            select(func.count()).select_from(Delivery).where(Delivery.state == "sent")
        ).scalar_one()
        ecgs = s.execute(select(func.count()).select_from(EcgRecord)).scalar_one()
    return int(results), int(sent), int(ecgs)


def _run(n: int, tmp_path: Path, postgres_server: object, timeout_s: float) -> None:
    storescu = require("storescu")
    url = postgres_server.create_database()  # type: ignore[attr-defined]
    upgrade(url)
    scp = StoreScp(tmp_path / "pacs")
    sink = MllpSink()
    dicom_port = free_port()
    cfg = _config(tmp_path, url, dicom_port, scp, sink)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, data in enumerate(ecg_copies(n)):
        (inbox / f"ecg{i:04d}.dcm").write_bytes(data)
    procs: list[subprocess.Popen[bytes]] = []
    db = Database(url)
    try:
        procs.append(_spawn(["serve", "--role", "listeners", "-c", str(cfg)], tmp_path / "listeners.log"))
        wait_port(dicom_port, 60)
        workers = [_spawn(["worker", "-c", str(cfg)], tmp_path / f"worker{i}.log") for i in range(2)]
        procs += workers
        sent = subprocess.run(
            [storescu, "-aet", "CART1", "-aec", "ECGCAD", "+sd", "127.0.0.1", str(dicom_port), str(inbox)],
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert _counts(db)[2] == n, "every C-STORE was committed before it was acknowledged"
        started = time.monotonic()
        deadline = started + timeout_s
        while _counts(db)[0] < max(n // 4, 2):
            assert time.monotonic() < deadline, f"no progress: {_counts(db)}"
            assert all(w.poll() is None for w in workers), "a worker exited"
            time.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(10)
        while _counts(db)[:2] != (n, 2 * n):
            assert time.monotonic() < deadline, f"did not finish: (results, sent, ecgs) = {_counts(db)}"
            assert workers[1].poll() is None, "the surviving worker exited"
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        print(f"\n{n} ECGs scored and delivered in {elapsed:.1f}s after the last C-STORE (one worker killed)")
        with db.session() as s:
            per_key = s.execute(
                select(Result.ecg_id, Result.model_version_id, func.count()).group_by(
                    Result.ecg_id, Result.model_version_id
                )
            ).all()
            assert len(per_key) == n and all(c == 1 for *_, c in per_key), (
                "one result per ECG and model version"
            )
            rows = s.execute(select(Delivery.result_id, Delivery.destination, Delivery.state)).all()
            assert len(rows) == 2 * n and {r.state for r in rows} == {"sent"}
        deadline = time.monotonic() + 30
        while len(scp.files()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        sr_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in scp.files()}
        controls = [m.split(b"\r", 1)[0].split(b"|")[9] for m in sink.messages]
        # MSH-10 is E<result>V<version>A<attempt>: a worker killed between the peer's AA and its commit
        # resends the same result with the next attempt number (at-least-once delivery, documented).
        results_reported = {re.sub(rb"A\d+$", b"", c) for c in controls}
        print(
            f"ORUs received {len(controls)}, distinct results {len(results_reported)}, resent {len(controls) - len(results_reported)}"
        )
        assert len(sr_uids) == n, "the PACS has one SR per ECG"
        assert len(results_reported) == n, "the EHR has one result per ECG"
        assert len(controls) - len(results_reported) <= 8, (
            "only a killed worker's in-flight sends are repeated"
        )
        resent = len(sink.messages) - n
        # At-least-once: only an object in flight on the killed worker may have been sent twice.
        assert resent <= 8, f"{resent} ORUs sent more than once"
    finally:
        for p in procs:
            stop_process(p)
        scp.stop()
        sink.stop()
        db.dispose()


def test_two_workers_one_killed_every_ecg_scored_once(tmp_path: Path, postgres_server: object) -> None:
    _run(N_DEFAULT, tmp_path, postgres_server, timeout_s=240)


@pytest.mark.slow
def test_500_ecgs_two_workers_one_killed(tmp_path: Path, postgres_server: object) -> None:
    _run(500, tmp_path, postgres_server, timeout_s=1800)
