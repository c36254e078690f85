"""Slow and hostile peers against the listeners (in-process, loopback): slowloris drips, an association that
never releases, a 100 MB MLLP frame, 1,000 idle connections. Limits hold, other senders are served, and the
resident memory of the server process stays bounded."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from ecgcad.context import AppContext
from ecgcad.db.migrate import upgrade
from ecgcad.integration.transport.mllp import MllpDecoder
from ecgcad.listeners.dicom_scp import TWELVE_LEAD_ECG_WAVEFORM_STORAGE, DicomScp
from ecgcad.listeners.hl7_server import Hl7Server
from tests.listeners.conftest import make_settings
from tests.listeners.hl7util import SocketClient, msa, oru
from tests.reliability.harness import _template, figures, rss_kib, unique_ecg


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[AppContext, DicomScp, Hl7Server]] = []

    def start(**overrides: Any) -> tuple[AppContext, DicomScp, Hl7Server]:
        settings = make_settings(tmp_path / f"svc{len(made)}", **overrides)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.effective_database_url)
        ctx = AppContext.from_settings(settings)
        scp, hl7 = DicomScp(ctx), Hl7Server(ctx)
        scp.start()
        hl7.start()
        made.append((ctx, scp, hl7))
        return ctx, scp, hl7

    yield start
    for ctx, scp, hl7 in made:
        scp.stop()
        hl7.stop()
        ctx.close()


def _legit_hl7(port: int, cid: str) -> str:
    client = SocketClient(("127.0.0.1", port), timeout=15)
    try:
        return msa(client.send(oru(cid)))[1]
    finally:
        client.sock.close()


def _legit_dicom(port: int, n: int = 0) -> int:
    ae = AE(ae_title="CART")
    ae.add_requested_context(TWELVE_LEAD_ECG_WAVEFORM_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    assoc = ae.associate("127.0.0.1", port)
    if not assoc.is_established:
        return -1
    try:
        return int(assoc.send_c_store(unique_ecg(_template(), n, "LEGIT")).Status)
    finally:
        assoc.release()


@pytest.mark.timeout(120)
def test_slowloris_and_never_released_association_are_cut_and_others_are_served(listeners: Any) -> None:
    # every peer here is 127.0.0.1: the per-address cap (tested in tests/listeners) is lifted to test the rest
    _, scp, hl7 = listeners(
        dicom={"network_timeout_s": 2}, hl7={"idle_timeout_s": 2, "max_connections_per_address": 1000}
    )
    dport, hport = scp.address[1], hl7.address[1]
    # HL7 slowloris: a frame opened and dripped one byte per second (never idle for idle_timeout_s)
    drips = [socket.create_connection(("127.0.0.1", hport), timeout=5) for _ in range(20)]
    for s in drips:
        s.sendall(b"\x0bMSH|^~\\&|")
    # DICOM slowloris: an A-ASSOCIATE-RQ header announcing 1,000 bytes, dripped
    dslow = [socket.create_connection(("127.0.0.1", dport), timeout=5) for _ in range(10)]
    for s in dslow:
        s.sendall(b"\x01\x00" + struct.pack(">I", 1000))
    # an association that is established and never released
    ae = AE(ae_title="HANGER")
    ae.add_requested_context(TWELVE_LEAD_ECG_WAVEFORM_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    hanging = ae.associate("127.0.0.1", dport)
    assert hanging.is_established
    t0 = time.monotonic()
    served: list[tuple[str, int]] = []
    alive_hl7: list[int] = []
    alive_dicom: list[int] = []
    for second in range(12):
        for s in drips + dslow:
            try:
                s.sendall(b"A")
            except OSError:
                pass
        if second in (1, 3):
            served.append((_legit_hl7(hport, f"SL{second}"), _legit_dicom(dport, second)))
        time.sleep(1.0)
        alive_hl7.append(hl7.connection_count)
        alive_dicom.append(len(scp._ae.active_associations) if scp._ae else 0)  # type: ignore[union-attr]
        if not hanging.is_alive() and second >= 4:
            break
    hang_cut_s = time.monotonic() - t0
    dicom_cut = all(_is_closed(s) for s in dslow)
    hl7_cut = all(_is_closed(s) for s in drips)
    figures(
        "slowloris / never-released association",
        faults_injected="20 HL7 drips, 10 DICOM drips, 1 idle association",
        legit_served=served,
        hl7_open_connections_per_s=alive_hl7,
        dicom_associations_per_s=alive_dicom,
        idle_association_aborted_after_s=round(hang_cut_s, 1),
        dicom_drips_closed=dicom_cut,
        hl7_drips_closed=hl7_cut,
    )
    for s in drips + dslow:
        s.close()
    assert all(h == "AA" and d == 0 for h, d in served), served
    assert not hanging.is_alive() and hang_cut_s < 10, "an idle association outlived network_timeout_s"
    assert dicom_cut, "a DICOM slowloris outlived the ACSE timeout"
    assert hl7_cut, "an HL7 slowloris holds its connection by dripping bytes"


def _is_closed(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.timeout(120)
def test_100mb_mllp_frame_gets_ar_and_close_with_bounded_memory(listeners: Any) -> None:
    import os

    _, _, hl7 = listeners()
    port = hl7.address[1]
    limit = 16 * 1024 * 1024
    before = rss_kib(os.getpid())
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(os.getpid()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    chunk = b"X" * (1024 * 1024)
    sent = 0
    sock.sendall(b"\x0bMSH|^~\\&|BIG|||||20240101||ORU^R01^ORU_R01|BIG1|P|2.5.1\rOBX|1|ED|||")
    try:
        for _ in range(100):
            sock.sendall(chunk)
            sent += len(chunk)
        sock.sendall(b"\r\x1c\x0d")
    except OSError:
        pass
    decoder = MllpDecoder()
    acks: list[bytes] = []
    sock.settimeout(10)
    try:
        while not acks:
            data = sock.recv(65536)
            if not data:
                break
            acks += decoder.feed(data)
    except OSError:
        pass
    closed = _is_closed(sock)
    sock.close()
    stop.set()
    sampler.join(2)
    ok = _legit_hl7(port, "AFTERBIG")
    growth_mb = (peak[0] - before) / 1024
    figures(
        "100 MB MLLP frame",
        faults_injected=1,
        bytes_sent_before_close_mb=round(sent / 2**20),
        ack=msa(acks[0])[1] if acks else None,
        connection_closed=closed,
        rss_growth_mb=round(growth_mb, 1),
        limit_mb=limit // 2**20,
        next_sender=ok,
    )
    assert acks and msa(acks[0])[1] == "AR" and closed
    assert sent < 100 * 2**20, "the server read the whole 100 MB"
    assert growth_mb < 64, f"RSS grew {growth_mb:.0f} MB"
    assert ok == "AA"


@pytest.mark.timeout(180)
def test_1000_idle_connections_hold_the_limits_and_others_are_served(listeners: Any) -> None:
    import os
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(1000, (soft - 200) // 2)  # client and server ends are both in this process
    _, scp, hl7 = listeners(
        dicom={"network_timeout_s": 3, "max_associations": 16},
        # every peer here is 127.0.0.1: the per-address cap is lifted so that the global cap is what holds
        hl7={"max_connections": 200, "idle_timeout_s": 30, "max_connections_per_address": 10_000},
    )
    before = rss_kib(os.getpid())
    hl7_idle = [socket.create_connection(("127.0.0.1", hl7.address[1]), timeout=10) for _ in range(n)]
    time.sleep(1.0)
    hl7_open = hl7.connection_count
    refused_closed = sum(_is_closed(s) for s in hl7_idle[-50:])
    # the cap is full of idle peers: a real sender is refused now, served once idle peers go away
    for s in hl7_idle:
        s.close()
    time.sleep(0.5)
    hl7_ok = _legit_hl7(hl7.address[1], "IDLE-AFTER")
    dicom_idle = [socket.create_connection(("127.0.0.1", scp.address[1]), timeout=10) for _ in range(n // 4)]
    time.sleep(0.5)
    rss_peak = rss_kib(os.getpid())
    dicom_assocs = len(scp._ae.active_associations) if scp._ae else 0  # type: ignore[union-attr]
    deadline = time.monotonic() + 20
    status = -1
    while time.monotonic() < deadline:
        status = _legit_dicom(scp.address[1])
        if status == 0:
            break
        time.sleep(0.5)
    served_after_s = 20 - (deadline - time.monotonic())
    for s in dicom_idle:
        s.close()
    figures(
        "idle connections",
        fd_soft_limit=soft,
        hl7_idle_opened=n,
        hl7_connections_held=hl7_open,
        hl7_excess_closed_of_last_50=refused_closed,
        dicom_idle_opened=n // 4,
        dicom_association_threads=dicom_assocs,
        dicom_store_served_after_s=round(served_after_s, 1),
        rss_growth_mb=round((rss_peak - before) / 1024, 1),
        hl7_after=hl7_ok,
    )
    assert hl7_open <= 200 and refused_closed == 50
    assert hl7_ok == "AA" and status == 0
    assert (rss_peak - before) / 1024 < 200
