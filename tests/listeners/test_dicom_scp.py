"""The C-STORE SCP against real peers on loopback: dcmtk, pynetdicom as SCU, Orthanc, and a raw socket."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import event, select

from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent, EcgRecord, Job, SourceObject
from ecgcad.db.session import Database
from ecgcad.listeners.dicom_scp import (
    STATUS_OUT_OF_RESOURCES,
    TWELVE_LEAD_ECG_WAVEFORM_STORAGE,
    _readable,
)
from tests.helpers import count_rows
from tests.listeners.conftest import DCMTK_ENV, ECG_FILE, require_tool


def _audit_types(ctx: AppContext) -> list[str]:
    with ctx.db.session() as s:
        return list(s.execute(select(AuditEvent.event_type).order_by(AuditEvent.id)).scalars())


def _ecg_with_new_uid() -> pydicom.Dataset:
    ds = pydicom.dcmread(ECG_FILE)
    ds.SOPInstanceUID = generate_uid()
    return ds


def _scu_store(address: tuple[str, int], datasets: list[pydicom.Dataset], calling: str = "SCU") -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(TWELVE_LEAD_ECG_WAVEFORM_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(*address, ae_title="ECGCAD")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_storescu_real_ecg_is_stored_decoded_queued_and_audited(start_scp: Any) -> None:
    storescu = require_tool("storescu")
    scp, ctx = start_scp()
    host, port = scp.address
    r = subprocess.run(
        [storescu, "-aet", "CART1", "-aec", "ECGCAD", host, str(port), ECG_FILE],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    with ctx.db.session() as s:
        row = s.execute(select(EcgRecord)).scalar_one()
        src = s.get(SourceObject, row.source_object_id)
        job = s.execute(select(Job)).scalar_one()
        assert row.decode_status == "decoded"
        assert row.sop_instance_uid == pydicom.dcmread(ECG_FILE).SOPInstanceUID
        assert src is not None and src.calling_ae == "CART1" and src.kind == "dicom"
        assert job.kind == "score" and job.payload == {"ecg_id": row.id}
    # the stored bytes are a DICOM file equal to what was sent (dataset part byte-identical)
    stored = pydicom.dcmread(ctx.store.path_for(src.sha256))
    assert stored.SOPInstanceUID == row.sop_instance_uid
    assert {"dicom.association", "dicom.received"} <= set(_audit_types(ctx))


def test_echoscu_verification_succeeds(start_scp: Any) -> None:
    echoscu = require_tool("echoscu")
    scp, _ = start_scp()
    r = subprocess.run(
        [echoscu, *map(str, scp.address)], env=DCMTK_ENV, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr


def test_non_ecg_sop_class_is_refused_at_association(start_scp: Any) -> None:
    storescu = require_tool("storescu")
    scp, ctx = start_scp()
    ct = get_testdata_file("CT_small.dcm")
    r = subprocess.run(
        [storescu, "-xs", *map(str, scp.address), ct],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert count_rows(ctx, SourceObject) == 0


def test_hemodynamic_waveform_association_is_refused_and_audited(start_scp: Any) -> None:
    scp, ctx = start_scp()
    ae = AE(ae_title="HEMO")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.9.2.1", ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(*scp.address)
    assert not assoc.accepted_contexts
    assoc.release()
    deadline = time.monotonic() + 5
    while "dicom.rejected" not in _audit_types(ctx) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "dicom.rejected" in _audit_types(ctx)


def test_calling_ae_outside_allow_list_is_rejected_and_audited(start_scp: Any) -> None:
    echoscu = require_tool("echoscu")
    scp, ctx = start_scp(dicom={"allowed_calling_aets": ["CART1"]})
    bad = subprocess.run(
        [echoscu, "-aet", "INTRUDER", *map(str, scp.address)], env=DCMTK_ENV, capture_output=True, timeout=30
    )
    good = subprocess.run(
        [echoscu, "-aet", "CART1", *map(str, scp.address)], env=DCMTK_ENV, capture_output=True, timeout=30
    )
    assert bad.returncode != 0
    assert good.returncode == 0
    with ctx.db.session() as s:
        rejected = s.execute(select(AuditEvent).where(AuditEvent.event_type == "dicom.rejected")).scalar_one()
        assert rejected.ae_title == "INTRUDER"
        assert rejected.detail == {"reason": "calling AE title not allowed"}


def test_address_outside_allow_list_is_closed_and_audited(start_scp: Any) -> None:
    echoscu = require_tool("echoscu")
    scp, ctx = start_scp(dicom={"allowed_addresses": ["10.0.0.0/8"]})
    r = subprocess.run([echoscu, *map(str, scp.address)], env=DCMTK_ENV, capture_output=True, timeout=30)
    assert r.returncode != 0
    assert "dicom.rejected" in _audit_types(ctx)


def test_duplicate_instance_is_acknowledged_once_and_new_bytes_are_a_new_version(start_scp: Any) -> None:
    scp, ctx = start_scp()
    ds = _ecg_with_new_uid()
    changed = pydicom.dcmread(ECG_FILE)
    changed.SOPInstanceUID = ds.SOPInstanceUID
    changed.StudyDescription = "corrected"
    assert _scu_store(scp.address, [ds, ds, changed]) == [0, 0, 0]
    assert count_rows(ctx, SourceObject) == 2
    assert count_rows(ctx, Job) == 2
    with ctx.db.session() as s:
        versions = sorted(s.execute(select(SourceObject.object_version)).scalars())
    assert versions == [1, 2]
    assert "dicom.new_version" in _audit_types(ctx)


def test_acknowledged_only_after_commit_database_failure_gives_out_of_resources(start_scp: Any) -> None:
    scp, ctx = start_scp()
    # the ingestor's database refuses every write: nothing can be committed, so nothing may be acknowledged
    failing = Database(ctx.db.url)

    @event.listens_for(failing.engine, "connect")
    def _read_only(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only=ON")

    ctx.ingestor.db = failing
    try:
        assert _scu_store(scp.address, [_ecg_with_new_uid()]) == [STATUS_OUT_OF_RESOURCES]
    finally:
        ctx.ingestor.db = ctx.db
        failing.dispose()
    assert count_rows(ctx, SourceObject) == 0
    ds = _ecg_with_new_uid()
    assert _scu_store(scp.address, [ds]) == [0]
    # what was acknowledged is committed and visible to any other connection at once
    assert count_rows(ctx, EcgRecord, EcgRecord.sop_instance_uid == ds.SOPInstanceUID) == 1


def test_back_pressure_from_queue_depth_answers_out_of_resources(start_scp: Any) -> None:
    scp, ctx = start_scp(queue={"max_depth": 1})
    with ctx.db.session() as s:
        ctx.queue.defer(s, "score", {"ecg_id": 0})
    assert _scu_store(scp.address, [_ecg_with_new_uid()]) == [STATUS_OUT_OF_RESOURCES]
    assert count_rows(ctx, SourceObject) == 0


def test_back_pressure_from_disk_reserve_answers_out_of_resources(start_scp: Any) -> None:
    scp, ctx = start_scp()
    ctx.store.min_free_bytes = ctx.store.free_bytes() + 1
    assert _scu_store(scp.address, [_ecg_with_new_uid()]) == [STATUS_OUT_OF_RESOURCES]
    ctx.store.min_free_bytes = 0
    assert _scu_store(scp.address, [_ecg_with_new_uid()]) == [0]


def test_undecodable_but_wellformed_dataset_is_stored_with_its_decode_failure(start_scp: Any) -> None:
    scp, ctx = start_scp()
    ds = _ecg_with_new_uid()
    del ds.WaveformSequence
    assert _scu_store(scp.address, [ds]) == [0]
    with ctx.db.session() as s:
        row = s.execute(select(EcgRecord)).scalar_one()
        assert row.decode_status == "failed" and row.decode_reason
    assert count_rows(ctx, Job) == 1


def test_unparseable_bytes_are_not_readable() -> None:
    assert not _readable(b"\x00" * 132 + b"DICM" + b"\xff" * 40)
    assert _readable(Path(ECG_FILE).read_bytes())


def test_broken_pdus_from_a_raw_socket_do_not_take_the_scp_down(start_scp: Any) -> None:
    scp, _ = start_scp()
    for payload in (
        b"\x01\x00\x00\x00\x00\x05hello",
        b"GET / HTTP/1.0\r\n\r\n",
        b"\x07" * 3,
        b"\x01\x00\xff\xff\xff\xff",
    ):
        with socket.create_connection(scp.address, timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except (TimeoutError, ConnectionError):
                pass
    assert scp.alive
    ds = _ecg_with_new_uid()
    assert _scu_store(scp.address, [ds]) == [0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.peers
def test_orthanc_pushes_the_ecg_to_the_scp(start_scp: Any, tmp_path: Path) -> None:
    orthanc = require_tool("/usr/sbin/Orthanc")
    scp, ctx = start_scp()
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "ecgcad-test",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "Plugins": [],
        "DicomModalities": {"ecgcad": ["ECGCAD", scp.address[0], scp.address[1]]},
    }
    cfg = tmp_path / "orthanc.json"
    cfg.write_text(json.dumps(config))
    proc = subprocess.Popen([orthanc, str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/system", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("Orthanc did not start")
                time.sleep(0.2)
        req = urllib.request.Request(f"{base}/instances", data=Path(ECG_FILE).read_bytes(), method="POST")
        instance = json.loads(urllib.request.urlopen(req, timeout=10).read())["ID"]
        req = urllib.request.Request(f"{base}/modalities/ecgcad/store", data=instance.encode(), method="POST")
        urllib.request.urlopen(req, timeout=30).read()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    with ctx.db.session() as s:
        src = s.execute(select(SourceObject)).scalar_one()
        assert src.calling_ae == "ORTHANC"
        row = s.execute(select(EcgRecord)).scalar_one()
        assert row.decode_status == "decoded"


def test_stored_file_meta_names_the_instance_transfer_syntax_and_sender(start_scp: Any) -> None:
    storescu = require_tool("storescu")
    dcmdump = require_tool("dcmdump")
    scp, ctx = start_scp()
    r = subprocess.run(
        [storescu, "-aet", "CART7", "-aec", "ECGCAD", "-xi", *map(str, scp.address), ECG_FILE],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    with ctx.db.session() as s:
        src = s.execute(select(SourceObject)).scalar_one()
    path = ctx.store.path_for(src.sha256)
    stored = pydicom.dcmread(path)
    sent = pydicom.dcmread(ECG_FILE)
    meta = stored.file_meta
    assert meta.MediaStorageSOPClassUID == sent.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian  # what -xi negotiated
    assert meta.SourceApplicationEntityTitle == "CART7"
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert stored.waveform_array(0).shape == sent.waveform_array(0).shape
    out = subprocess.run([dcmdump, str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    assert "FileMetaInformationGroupLength" in out.stdout and "[CART7]" in out.stdout


def test_part10_pads_odd_values_and_counts_the_group_length() -> None:
    import io

    from ecgcad.integration.reports.dicom_encode import part10_file as part10

    data = part10(
        b"",
        sop_class_uid="1.2.3",
        sop_instance_uid="1.2.34",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        source_ae="AE1",
    )
    meta = pydicom.dcmread(io.BytesIO(data)).file_meta
    assert meta.MediaStorageSOPClassUID == "1.2.3" and meta.MediaStorageSOPInstanceUID == "1.2.34"
    assert meta.SourceApplicationEntityTitle == "AE1"
    assert meta.FileMetaInformationGroupLength == len(data) - 132 - 12


def test_association_reactor_takes_a_message_as_soon_as_it_is_queued() -> None:
    import queue
    import threading
    from types import SimpleNamespace

    from ecgcad.listeners.dicom_scp import REACTOR_WAIT_S, _wait_for_dimse_messages

    dimse = SimpleNamespace(msg_queue=queue.Queue(), get_msg=lambda block=False: ("blocking", block))
    _wait_for_dimse_messages(SimpleNamespace(dimse=dimse))
    threading.Timer(REACTOR_WAIT_S / 5, dimse.msg_queue.put, args=((1, "C-STORE"),)).start()
    assert dimse.get_msg() == (1, "C-STORE"), "a non-blocking get waits briefly for the next message"
    started = time.monotonic()
    assert dimse.get_msg() == (None, None)
    assert time.monotonic() - started < 50 * REACTOR_WAIT_S, "and returns when none comes"
    assert dimse.get_msg(block=True) == ("blocking", True), "blocking calls keep pynetdicom's behaviour"
