"""``dicom.max_object_mb``: objects over the limit are refused ``0xA700`` while they stream, never held whole."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent, EcgRecord, SourceObject
from ecgcad.integration.formats import readers
from ecgcad.listeners.dicom_scp import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    TWELVE_LEAD_ECG_WAVEFORM_STORAGE,
)
from tests.helpers import count_rows
from tests.listeners.conftest import DCMTK_ENV, ECG_FILE, require_tool

MIB = 1024 * 1024


def _stored(ctx: AppContext) -> int:
    return count_rows(ctx, SourceObject)


def _rejections(ctx: AppContext) -> list[dict[str, Any]]:
    with ctx.db.session() as s:
        rows = s.execute(select(AuditEvent.detail).where(AuditEvent.event_type == "dicom.rejected"))
        return [dict(d or {}) for d in rows.scalars()]


def _ecg(padding: int = 0) -> pydicom.Dataset:
    """The test ECG with a new SOP Instance UID and ``padding`` bytes of a private OB element."""
    ds = pydicom.dcmread(ECG_FILE)
    ds.SOPInstanceUID = generate_uid()
    if padding:
        ds.private_block(0x7FE1, "ECGCAD TEST", create=True).add_new(0x10, "OB", b"\0" * padding)
    return ds


def _write_padded_ecg(path: Path, padding: int) -> None:
    """Write the test ECG file plus a private OB element of ``padding`` zero bytes, a MiB at a time."""
    assert padding % 2 == 0
    with path.open("wb") as f:
        f.write(Path(ECG_FILE).read_bytes())  # Explicit VR Little Endian; its last tags are (7001,xxxx)
        creator = b"ECGCAD TEST "
        f.write(struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator)
        f.write(struct.pack("<HH2s2xI", 0x7FE1, 0x1010, b"OB", padding))
        chunk = b"\0" * MIB
        for start in range(0, padding, MIB):
            f.write(chunk[: min(MIB, padding - start)])


def _scu_store(address: tuple[str, int], datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(TWELVE_LEAD_ECG_WAVEFORM_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(*address, ae_title="ECGCAD")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_storescu_object_over_max_object_mb_is_refused_while_streaming_in_bounded_memory(
    start_scp: Any, tmp_path: Path
) -> None:
    storescu = require_tool("storescu")
    big = tmp_path / "big.dcm"
    _write_padded_ecg(big, 100 * MIB)
    scp, ctx = start_scp(dicom={"max_object_mb": 8})
    host, port = scp.address
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        r = subprocess.run(
            [storescu, "-v", "-aet", "CART1", "-aec", "ECGCAD", host, str(port), str(big)],
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    # The 100 MiB object was read to its end (so the sender got its answer) but never held: the server's
    # Python heap grew by the 8 MiB limit plus a few PDUs, not by the object.
    assert peak - before < 50 * MIB, f"server heap grew {(peak - before) / MIB:.0f} MiB"
    out = r.stdout + r.stderr
    assert "Received Store Response (Refused: OutOfResources)" in out, out
    assert _stored(ctx) == 0
    assert [d["reason"] for d in _rejections(ctx)] == ["object too large"]
    # the association and the SCP go on: a normal ECG is stored afterwards
    assert _scu_store(scp.address, [_ecg()]) == [STATUS_SUCCESS]
    assert _stored(ctx) == 1


def test_object_over_the_limit_is_refused_and_the_next_one_on_the_association_is_stored(
    start_scp: Any,
) -> None:
    scp, ctx = start_scp(dicom={"max_object_mb": 1})
    statuses = _scu_store(scp.address, [_ecg(padding=2 * MIB), _ecg(), _ecg(padding=MIB - 300_000)])
    assert statuses == [STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS, STATUS_SUCCESS]
    assert _stored(ctx) == 2


def test_object_within_max_object_mb_but_over_the_decode_limit_is_refused_not_stored(
    start_scp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The readers refuse to decode inputs over MAX_INPUT_BYTES; such an object must get 0xA700, not be
    # stored undecoded and acknowledged. (max_object_mb cannot exceed the decode limit, so it is lowered.)
    monkeypatch.setattr(readers, "MAX_INPUT_BYTES", 100_000)
    scp, ctx = start_scp(dicom={"max_object_mb": 64})
    assert _scu_store(scp.address, [_ecg()]) == [STATUS_OUT_OF_RESOURCES]
    assert _stored(ctx) == 0
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(EcgRecord)).scalar_one() == 0


def test_max_object_mb_cannot_exceed_the_decode_limit(make_ctx: Callable[..., AppContext]) -> None:
    from ecgcad.config import DicomSettings

    limit = DicomSettings.model_fields["max_object_mb"].metadata
    le = next(m.le for m in limit if hasattr(m, "le"))
    assert le * MIB <= readers.MAX_INPUT_BYTES
    assert DicomSettings().max_object_mb == 64


def test_pdu_longer_than_negotiated_closes_the_connection_before_it_is_read(start_scp: Any) -> None:
    # network_timeout_s is long so that only the PDU cap, not the slow-peer watchdog, can close it.
    scp, _ = start_scp(dicom={"network_timeout_s": 120})
    with socket.create_connection(scp.address, timeout=5) as sock:
        closed = False
        try:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 200 * MIB))
            for _ in range(32):  # 32 MiB of the announced 200: a server reading it would keep taking them
                sock.sendall(b"\0" * MIB)
            closed = sock.recv(1) == b""  # waits up to the socket timeout for the close
        except OSError:  # reset while sending, or no close within the timeout
            closed = not isinstance(sys.exc_info()[1], TimeoutError)
    assert closed, "the SCP kept reading a 200 MiB A-ASSOCIATE-RQ"
    assert scp.alive
    assert _scu_store(scp.address, [_ecg()]) == [STATUS_SUCCESS]
