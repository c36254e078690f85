"""Durability: SIGKILL the listener process while senders stream; every acknowledged object survives once."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from ecgcad.config import load_settings
from ecgcad.context import AppContext
from ecgcad.db.migrate import upgrade
from ecgcad.db.models import Job, SourceObject
from ecgcad.listeners.dicom_scp import TWELVE_LEAD_ECG_WAVEFORM_STORAGE
from ecgcad.pipeline.hl7_jobs import make_hl7_handler
from tests.listeners.conftest import ECG_FILE
from tests.listeners.hl7util import SocketClient, msa, oru

CHILD = """
import signal, sys
from ecgcad.config import load_settings
from ecgcad.context import AppContext
from ecgcad.listeners.dicom_scp import DicomScp
from ecgcad.listeners.hl7_server import Hl7Server
ctx = AppContext.from_settings(load_settings(sys.argv[1]))
scp, hl7 = DicomScp(ctx), Hl7Server(ctx)
scp.start(); hl7.start()
print("READY", scp.address[1], hl7.address[1], flush=True)
signal.pause()
"""


def _spawn(config: Path) -> tuple[subprocess.Popen[str], int, int]:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(30)
    if not line or not line[0].startswith("READY"):
        proc.kill()
        pytest.fail("listener process did not start")
    _, dport, hport = line[0].split()
    return proc, int(dport), int(hport)


class _Hl7Sender(threading.Thread):
    def __init__(self, port: int, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.port, self.ids, self.acked = port, ids, []  # type: ignore[var-annotated]

    def run(self) -> None:
        try:
            client = SocketClient(("127.0.0.1", self.port), timeout=10)
            for cid in self.ids:
                if msa(client.send(oru(cid)))[1] == "AA":
                    self.acked.append(cid)
        except (OSError, ConnectionError):
            pass


class _DicomSender(threading.Thread):
    def __init__(self, port: int, datasets: list[pydicom.Dataset]) -> None:
        super().__init__(daemon=True)
        self.port, self.datasets, self.acked = port, datasets, []  # type: ignore[var-annotated]

    def run(self) -> None:
        ae = AE(ae_title="CART")
        ae.add_requested_context(TWELVE_LEAD_ECG_WAVEFORM_STORAGE, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", self.port)
        try:
            for ds in self.datasets:
                status = assoc.send_c_store(ds)
                if not assoc.is_established or "Status" not in status:
                    self.error = f"no status: {assoc.is_established} {status}"
                    return
                if status.Status == 0:
                    self.acked.append(ds.SOPInstanceUID)
        except Exception as exc:  # noqa: BLE001 - the peer was killed mid-stream
            self.error = exc
        finally:
            if assoc.is_established:
                assoc.abort()


@pytest.mark.timeout(120)
def test_sigkill_while_streaming_loses_no_acknowledged_message(tmp_path: Path) -> None:
    config = tmp_path / "ecgcad.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[dicom]\nport = 0\n[hl7]\nport = 0\n[queue]\nmin_free_disk_mb = 0\n'
    )
    settings = load_settings(config)
    (tmp_path / "data").mkdir()
    upgrade(settings.effective_database_url)

    template = pydicom.dcmread(ECG_FILE)
    datasets = []
    for _ in range(100):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        datasets.append(ds)
    ids = [f"K{i:04d}" for i in range(2000)]

    proc, dport, hport = _spawn(config)
    hl7, dicom = _Hl7Sender(hport, ids), _DicomSender(dport, datasets)
    hl7.start()
    dicom.start()
    deadline = time.monotonic() + 40
    while (len(hl7.acked) < 30 or len(dicom.acked) < 5) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    hl7.join(15)
    dicom.join(15)
    acked_hl7, acked_dicom = list(hl7.acked), list(dicom.acked)
    assert len(acked_hl7) >= 30 and len(acked_dicom) >= 5
    assert len(acked_hl7) < len(ids) and len(acked_dicom) < len(datasets), (
        "the kill came after the senders finished"
    )

    # restart; the senders resend what was not acknowledged (the next few of each), which is stored once
    proc, dport, hport = _spawn(config)
    try:
        resend_hl7 = [i for i in ids if i not in set(acked_hl7)][:10]
        resend_dicom = [ds for ds in datasets if ds.SOPInstanceUID not in set(acked_dicom)][:3]
        hl7, dicom = _Hl7Sender(hport, resend_hl7 * 2), _DicomSender(dport, resend_dicom * 2)
        hl7.start()
        dicom.start()
        hl7.join(30)
        dicom.join(30)
        assert len(hl7.acked) == 20, hl7.ids
        assert len(dicom.acked) == 6, getattr(dicom, "error", None)
    finally:
        proc.kill()
        proc.wait(10)

    ctx = AppContext.from_settings(settings)
    try:
        with ctx.db.session() as s:
            by_cid = dict(
                s.execute(
                    select(SourceObject.message_control_id, func.count()).group_by(
                        SourceObject.message_control_id
                    )
                ).all()
            )
            by_uid = dict(
                s.execute(
                    select(SourceObject.sop_instance_uid, func.count()).group_by(
                        SourceObject.sop_instance_uid
                    )
                ).all()
            )
            hl7_jobs = s.execute(select(func.count()).select_from(Job).where(Job.kind == "hl7")).scalar_one()
            score_jobs = s.execute(
                select(func.count()).select_from(Job).where(Job.kind == "score")
            ).scalar_one()
        for cid in acked_hl7 + resend_hl7:
            assert by_cid.get(cid) == 1, cid
        for uid in acked_dicom + [ds.SOPInstanceUID for ds in resend_dicom]:
            assert by_uid.get(uid) == 1, uid
        assert hl7_jobs == sum(v for k, v in by_cid.items() if k)
        assert score_jobs == sum(v for k, v in by_uid.items() if k)
        # and the acknowledged messages' jobs run
        handler = make_hl7_handler(ctx)
        claimed = ctx.queue.claim(["hl7"], 1000, "test")
        assert len(claimed) == hl7_jobs
        assert handler(claimed) is None
    finally:
        ctx.close()
