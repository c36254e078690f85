"""Senders against real peers on loopback: dcmtk storescp, a refusing port, and an asyncio MLLP sink."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from ecgcad.errors import BuildError, DeliveryError, PermanentDeliveryError
from ecgcad.integration.reports.dicom_encode import encode_part10
from ecgcad.integration.reports.oru import build_oru
from ecgcad.integration.reports.pdf import build_encapsulated_pdf
from ecgcad.integration.reports.sr import build_stenosis_sr
from ecgcad.integration.transport.dicom import STORE_SOP_CLASSES, DicomStoreSender
from ecgcad.integration.transport.mllp import MllpSender, parse_ack
from ecgcad.integration.transport.mllp import frame as mllp_frame
from ecgcad.integration.transport.senders import Sender, SendOutcome
from ecgcad.logsetup import uid_hash
from ecgcad.testing.fake_senders import FakeSender, RefusingSender, RetryingSender
from tests.peers import wait_for
from tests.results.conftest import make_input, tool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError("storescp did not start listening")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    exe = tool("storescp")
    out = tmp_path / "received"
    out.mkdir()
    port = _free_port()
    log = (tmp_path / "storescp.log").open("wb")
    proc = subprocess.Popen(
        [exe, "-v", "-od", str(out), "-aet", "PACS", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_listening(port, proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def _scp_log(out: Path) -> str:
    """What the ``storescp`` fixture logged so far (``-v``: one "Association Acknowledged" per association)."""
    return (out.parent / "storescp.log").read_text(errors="replace")


def test_cstore_to_storescp_is_delivered_and_the_file_lands(storescp, ecg_dataset, ecg_bytes, caplog):
    port, out = storescp
    sr = build_stenosis_sr(make_input(ecg_dataset, ecg_bytes))
    sender = DicomStoreSender("127.0.0.1", port, called_ae="PACS", calling_ae="ECGCAD", timeout=10)
    assert isinstance(sender, Sender)
    with caplog.at_level(logging.DEBUG):
        outcome = sender.send(sr)
    assert outcome == SendOutcome.ok("status 0x0000", 0)
    files = list(out.iterdir())
    assert len(files) == 1
    stored = pydicom.dcmread(files[0])
    assert stored.SOPInstanceUID == sr.SOPInstanceUID
    assert stored.PatientID == ecg_dataset.PatientID
    # No PHI in our logs (STYLE.md §9).
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ecgcad"))
    assert ecg_dataset.PatientID not in ours and str(ecg_dataset.PatientName) not in ours


def test_cstore_accepts_part10_bytes(storescp, ecg_bytes):
    port, out = storescp
    outcome = DicomStoreSender("127.0.0.1", port, called_ae="PACS", timeout=10).send(ecg_bytes)
    assert outcome.delivered and len(list(out.iterdir())) == 1


def test_cstore_to_a_refusing_port_is_retryable(ecg_bytes):
    outcome = DicomStoreSender("127.0.0.1", _free_port(), called_ae="PACS", timeout=3).send(ecg_bytes)
    assert not outcome.delivered and outcome.retryable
    with pytest.raises(DeliveryError) as err:
        outcome.raise_for_outcome()
    assert not isinstance(err.value, PermanentDeliveryError)


@pytest.mark.parametrize(
    ("status", "delivered", "retryable"),
    [
        (0x0000, True, False),
        (0xB000, False, False),
        (0xA700, False, True),
        (0xA7FF, False, True),
        (0x0110, False, True),
        (0xA900, False, False),
        (0xC000, False, False),
        (0x0122, False, False),
        (0x0124, False, False),
        (0xFE00, False, True),
        (0x9999, False, True),
    ],
)
def test_cstore_status_classification(status, delivered, retryable):
    outcome = DicomStoreSender("127.0.0.1", 104, called_ae="PACS").classify(status)
    assert (outcome.delivered, outcome.retryable) == (delivered, retryable)


def test_cstore_warning_is_delivered_only_when_accepted():
    assert DicomStoreSender("h", 104, "PACS", accept_warnings=True).classify(0xB007).delivered


# -- MLLP ----------------------------------------------------------------------------------------------


class MllpSink:
    """An asyncio MLLP server in a thread that answers each message with a scripted acknowledgement.

    ``per_connection`` messages are answered on a connection before the sink closes it (``None``: keep it
    until the client closes). ``drop_next`` closes the connection after reading the next message, unanswered.
    """

    def __init__(self, mode: str, *, per_connection: int | None = 1) -> None:
        self.mode = mode
        self.per_connection = per_connection
        self.drop_next = False
        self.received: list[bytes] = []
        self.connections = 0
        self.closed = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while self.per_connection is None or answered < self.per_connection:
                try:
                    data = await reader.readuntil(b"\x1c\x0d")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client closed the connection
                message = data[data.index(b"\x0b") + 1 : -2]
                self.received.append(message)
                if self.drop_next:
                    self.drop_next = False
                    return
                if self.mode == "none":
                    await reader.read()  # never answer; wait until the client gives up and closes
                    return
                control = message.split(b"\r")[0].split(b"|")[9]
                if self.mode == "wrong-id":
                    control = b"OTHER"
                code = self.mode.encode()
                ack = (
                    b"MSH|^~\\&|EHR||ECGCAD||20240101||ACK^R01^ACK|A1|P|2.5.1\rMSA|"
                    + code
                    + b"|"
                    + control
                    + b"\r"
                )
                if code in (b"AE", b"AR"):
                    ack += b"ERR|||207^Application internal error^HL70357|E\r"
                writer.write(b"garbage-before-start" + mllp_frame(ack))
                await writer.drain()
                answered += 1
        except asyncio.CancelledError:
            return  # the sink is closing while a client still holds its connection open
        finally:
            self.closed += 1
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def oru(ecg_dataset, ecg_bytes) -> bytes:
    return build_oru(make_input(ecg_dataset, ecg_bytes), control_id="E7V1A1")


@pytest.mark.parametrize(
    ("mode", "delivered", "retryable"),
    [
        ("AA", True, False),
        ("CA", True, False),
        ("AE", False, True),
        ("CE", False, True),
        ("AR", False, False),
        ("CR", False, False),
        ("wrong-id", False, True),
    ],
)
def test_mllp_acknowledgement_codes_are_classified(oru, mode, delivered, retryable):
    sink = MllpSink(mode)
    try:
        outcome = MllpSender("127.0.0.1", sink.port, timeout=5).send(oru)
    finally:
        sink.close()
    assert sink.received == [oru]
    assert (outcome.delivered, outcome.retryable) == (delivered, retryable), outcome
    if mode in ("AA", "AE", "AR"):
        assert outcome.status == mode


def test_mllp_without_reply_times_out_as_retryable(oru):
    sink = MllpSink("none")
    try:
        started = time.monotonic()
        outcome = MllpSender("127.0.0.1", sink.port, timeout=0.5).send(oru)
        assert time.monotonic() - started < 3
    finally:
        sink.close()
    assert not outcome.delivered and outcome.retryable and "no acknowledgement" in outcome.response


def test_mllp_refused_connection_is_retryable(oru):
    outcome = MllpSender("127.0.0.1", _free_port(), timeout=2).send(oru)
    assert not outcome.delivered and outcome.retryable


def test_permanent_outcome_raises_permanent_delivery_error():
    with pytest.raises(PermanentDeliveryError):
        SendOutcome.permanent("MSA AR").raise_for_outcome()
    SendOutcome.ok("MSA AA").raise_for_outcome()


def test_parse_ack_reads_code_control_id_and_error():
    code, control, detail = parse_ack(b"MSH|^~\\&|A||B||2024||ACK|1|P|2.5.1\rMSA|AE|X9\rERR|||207\r")
    assert (code, control) == ("AE", "X9") and "207" in detail


def test_fake_senders_record_and_replay_scripts():
    fake = FakeSender([SendOutcome.retry("down"), SendOutcome.permanent("no")])
    assert isinstance(fake, Sender)
    results = [fake.send(b"m1"), fake.send(b"m2"), fake.send(b"m3")]
    assert [r.delivered for r in results] == [False, False, True]
    assert fake.sent == [b"m1", b"m2", b"m3"] and fake.delivered == [b"m3"]
    assert RetryingSender().send(b"x").retryable
    refused = RefusingSender().send(b"x")
    assert not refused.delivered and not refused.retryable


# -- Kept-open connections -------------------------------------------------------------------------------


def _copies(ds: pydicom.Dataset, n: int) -> list[pydicom.Dataset]:
    """``n`` copies of ``ds``, each with its own SOP Instance UID (so each lands as its own file)."""
    out = []
    for _ in range(n):
        copy = deepcopy(ds)
        copy.SOPInstanceUID = generate_uid()
        copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
        out.append(copy)
    return out


@pytest.fixture(scope="module")
def sr(ecg_dataset, ecg_bytes) -> pydicom.Dataset:
    return build_stenosis_sr(make_input(ecg_dataset, ecg_bytes))


def test_store_sop_classes_are_the_ones_delivery_builds():
    from ecgcad.integration.reports.pdf import ENCAPSULATED_PDF_STORAGE
    from ecgcad.integration.reports.sr import COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR

    assert set(STORE_SOP_CLASSES) == {COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR, ENCAPSULATED_PDF_STORAGE}


def test_kept_association_carries_sr_and_pdf_objects_and_close_releases_it(
    storescp, sr, ecg_dataset, ecg_bytes
):
    port, out = storescp
    pdf = build_encapsulated_pdf(make_input(ecg_dataset, ecg_bytes), b"%PDF-1.4\n%%EOF\n")
    objects = [*_copies(sr, 3), pdf]
    sender = DicomStoreSender("127.0.0.1", port, called_ae="PACS", timeout=10, keep_open_s=30)
    outcomes = [sender.send(obj) for obj in objects]
    assert outcomes == [SendOutcome.ok("status 0x0000", 0)] * 4
    assert len(list(out.iterdir())) == 4
    assert _scp_log(out).count("Association Acknowledged") == 1 and sender.associations == 1
    assert "Association Release" not in _scp_log(out)  # still open for the next object
    sender.close()
    wait_for(lambda: "Association Release" in _scp_log(out), 2, "storescp to see the release")
    assert sender.send(_copies(sr, 1)[0]).delivered  # a closed sender opens a new association
    assert _scp_log(out).count("Association Acknowledged") == 2
    sender.close()


def test_association_socket_sends_without_nagle_delay(pyscp, sr):
    # A C-STORE is a command PDU then data PDUs: with Nagle on, the data waits for the peer's (delayed) ACK.
    with DicomStoreSender("127.0.0.1", pyscp.port, called_ae="PACS", timeout=5, keep_open_s=30) as sender:
        assert sender.send(sr).delivered
        raw = sender._assoc.dul.socket.socket
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_keep_open_zero_opens_one_association_per_object(storescp, sr):
    port, out = storescp
    sender = DicomStoreSender("127.0.0.1", port, called_ae="PACS", timeout=10, keep_open_s=0)
    assert all(sender.send(obj).delivered for obj in _copies(sr, 3))
    log = _scp_log(out)
    assert log.count("Association Acknowledged") == 3 and sender.associations == 3
    wait_for(lambda: _scp_log(out).count("Association Release") == 3, 2, "three releases")


def test_other_sop_class_gets_an_association_of_its_own(storescp, sr, ecg_bytes):
    port, out = storescp  # storescp serves one association at a time
    with DicomStoreSender("127.0.0.1", port, called_ae="PACS", timeout=5, keep_open_s=30) as sender:
        first, second, third = _copies(sr, 3)
        outcomes = [sender.send(obj) for obj in (first, second, ecg_bytes, third)]
        assert outcomes == [SendOutcome.ok("status 0x0000", 0)] * 4
        # The 12-lead ECG is not a class requested up front: the kept association is released first (a peer
        # like this one would not answer a second one), the ECG goes on one of its own, then a new kept one.
        assert _scp_log(out).count("Association Acknowledged") == 3 and sender.associations == 3
        assert _scp_log(out).count("Association Release") == 2
    wait_for(lambda: _scp_log(out).count("Association Release") == 3, 2, "the last release")
    assert len(list(out.iterdir())) == 4


def test_idle_association_is_released_after_keep_open_s(storescp, sr):
    port, out = storescp
    sender = DicomStoreSender("127.0.0.1", port, called_ae="PACS", timeout=10, keep_open_s=0.3)
    assert sender.send(sr).delivered
    wait_for(lambda: "Association Release" in _scp_log(out), 2, "the idle association to be released")
    assert sender.send(sr).delivered
    assert sender.associations == 2


class StorageScp:
    """A pynetdicom Storage SCP counting associations (established, released by us), answering scripted
    C-STORE statuses (0x0000 when none is left)."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt

        self.established = 0
        self.released = 0
        self.stored: list[str] = []
        self.statuses: list[int] = []
        self.hold = threading.Event()
        self.hold_next = False
        ae = AE(ae_title="PACS")
        for sop_class in STORE_SOP_CLASSES:
            ae.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.port = _free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_ESTABLISHED, self._established),
                (evt.EVT_RELEASED, self._released),
                (evt.EVT_C_STORE, self._store),
            ],
        )

    def _established(self, event: object) -> None:
        self.established += 1

    def _released(self, event: object) -> None:
        self.released += 1

    def _store(self, event: object) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))  # type: ignore[attr-defined]
        if self.hold_next:
            self.hold_next = False
            self.hold.wait(2)  # answer late (after the sender's DIMSE timeout)
        return self.statuses.pop(0) if self.statuses else 0x0000

    def associations(self) -> list[object]:
        return list(self.server.active_associations)

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()


def test_kept_association_keeps_the_status_classification(pyscp, sr):
    statuses = [0x0000, 0xA700, 0xB000, 0x0122, 0xC000, 0xFE00, 0x0000]
    pyscp.statuses = list(statuses)
    with DicomStoreSender("127.0.0.1", pyscp.port, called_ae="PACS", timeout=5, keep_open_s=30) as sender:
        outcomes = [sender.send(obj) for obj in _copies(sr, len(statuses))]
    assert outcomes == [sender.classify(status) for status in statuses]
    assert [(o.delivered, o.retryable) for o in outcomes] == [
        (True, False),
        (False, True),
        (False, False),
        (False, False),
        (False, False),
        (False, True),
        (True, False),
    ]
    assert pyscp.established == 1  # failure statuses leave the association usable


@pytest.mark.parametrize("how", ["release", "abort"])
def test_association_ended_by_the_peer_while_idle_is_replaced(pyscp, sr, how):
    sender = DicomStoreSender("127.0.0.1", pyscp.port, called_ae="PACS", timeout=5, keep_open_s=30)
    first, second = _copies(sr, 2)
    assert sender.send(first).delivered
    (assoc,) = pyscp.associations()
    getattr(assoc, how)()
    wait_for(lambda: not pyscp.associations(), 2, "the peer to end the association")
    assert sender.send(second) == SendOutcome.ok("status 0x0000", 0)
    assert pyscp.established == 2 and pyscp.stored == [first.SOPInstanceUID, second.SOPInstanceUID]
    sender.close()


def test_no_response_on_a_kept_association_is_not_resent_and_the_association_is_dropped(pyscp, sr):
    sender = DicomStoreSender("127.0.0.1", pyscp.port, called_ae="PACS", timeout=0.5, keep_open_s=30)
    first, late, third = _copies(sr, 3)
    assert sender.send(first).delivered
    pyscp.hold_next = True
    outcome = sender.send(late)
    assert outcome == SendOutcome.retry("no C-STORE response (timeout or aborted association)")
    assert pyscp.stored == [first.SOPInstanceUID, late.SOPInstanceUID]  # sent once, not again
    pyscp.hold.set()
    assert sender.send(third).delivered
    assert pyscp.established == 2  # the timed-out association was aborted, not reused
    sender.close()


class CuttingProxy:
    """A TCP relay to a real peer whose connections can be cut the way a peer that died (or a firewall that
    forgot the connection) cuts them: the peer's side closes; ours stays open until we send, then closes
    unanswered."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[dict[str, object]] = []
        self.unanswered = 0  # bytes our side sent on cut connections
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pair: dict[str, object] = {"client": client, "upstream": upstream, "cut": False}
            self.pairs.append(pair)
            threading.Thread(target=self._up, args=(pair,), daemon=True).start()
            threading.Thread(target=self._down, args=(pair,), daemon=True).start()

    def _up(self, pair: dict[str, object]) -> None:
        client, upstream = pair["client"], pair["upstream"]
        assert isinstance(client, socket.socket) and isinstance(upstream, socket.socket)
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if pair["cut"]:
                    self.unanswered += len(data)
                    break
                upstream.sendall(data)
        client.close()
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _down(self, pair: dict[str, object]) -> None:
        client, upstream = pair["client"], pair["upstream"]
        assert isinstance(client, socket.socket) and isinstance(upstream, socket.socket)
        with contextlib.suppress(OSError):
            while (data := upstream.recv(65536)) and not pair["cut"]:
                client.sendall(data)
        if not pair["cut"]:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        for pair in self.pairs:
            pair["cut"] = True
            upstream = pair["upstream"]
            assert isinstance(upstream, socket.socket)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)
            upstream.close()

    def close(self) -> None:
        self.listener.close()
        for pair in self.pairs:
            for key in ("client", "upstream"):
                sock = pair[key]
                assert isinstance(sock, socket.socket)
                sock.close()


def test_association_dead_at_send_time_is_replaced_and_the_object_sent_again(storescp, sr):
    port, out = storescp
    proxy = CuttingProxy(port)
    sender = DicomStoreSender("127.0.0.1", proxy.port, called_ae="PACS", timeout=5, keep_open_s=30)
    try:
        first, second = _copies(sr, 2)
        assert sender.send(first).delivered
        proxy.cut()
        started = time.monotonic()
        outcome = sender.send(second)
        assert outcome == SendOutcome.ok("status 0x0000", 0)
        assert time.monotonic() - started < 3  # not a timeout: the dead connection failed at once
        assert proxy.unanswered > 0  # the C-STORE did go out on the dead association first
        assert sender.associations == 2 and _scp_log(out).count("Association Acknowledged") == 2
        stored = {p.name.split(".", 1)[1] for p in out.iterdir()}  # storescp names files "SRc.<uid>"
        assert stored == {first.SOPInstanceUID, second.SOPInstanceUID}
    finally:
        sender.close()
        proxy.close()


def _with_control_id(message: bytes, control_id: str) -> bytes:
    msh, rest = message.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + b"\r" + rest


@pytest.mark.parametrize(
    ("mode", "delivered", "retryable", "connections"),
    [
        ("AA", True, False, 1),
        ("AE", False, True, 1),
        ("AR", False, False, 1),
        ("wrong-id", False, True, 2),  # out of step: the connection is not reused
    ],
)
def test_mllp_kept_connection_keeps_the_classification(oru, mode, delivered, retryable, connections):
    sink = MllpSink(mode, per_connection=None)
    try:
        with MllpSender("127.0.0.1", sink.port, timeout=5, keep_open_s=30) as sender:
            outcomes = [sender.send(_with_control_id(oru, f"K{i}")) for i in range(2)]
    finally:
        sink.close()
    assert [(o.delivered, o.retryable) for o in outcomes] == [(delivered, retryable)] * 2, outcomes
    assert sink.connections == connections and len(sink.received) == 2


def test_mllp_kept_connection_carries_several_messages_and_close_releases_it(oru):
    sink = MllpSink("AA", per_connection=None)
    try:
        sender = MllpSender("127.0.0.1", sink.port, timeout=5, keep_open_s=30)
        messages = [_with_control_id(oru, f"K{i}") for i in range(5)]
        outcomes = [sender.send(m) for m in messages]
        assert [o.status for o in outcomes] == ["AA"] * 5 and all(o.delivered for o in outcomes)
        assert sink.received == messages
        assert sink.connections == 1 and sender.connections == 1 and sink.closed == 0
        sender.close()
        wait_for(lambda: sink.closed == 1, 2, "the sink to see the connection closed")
    finally:
        sink.close()


def test_mllp_keep_open_zero_opens_one_connection_per_message(oru):
    sink = MllpSink("AA", per_connection=None)
    try:
        sender = MllpSender("127.0.0.1", sink.port, timeout=5, keep_open_s=0)
        assert all(sender.send(_with_control_id(oru, f"K{i}")).delivered for i in range(3))
        assert sink.connections == 3
        wait_for(lambda: sink.closed == 3, 2, "every connection closed")
    finally:
        sink.close()


def test_mllp_peer_closing_the_idle_connection_does_not_fail_the_next_message(oru, caplog):
    sink = MllpSink("AA", per_connection=1)  # closes the connection after each acknowledgement
    try:
        sender = MllpSender("127.0.0.1", sink.port, timeout=5, keep_open_s=30)
        for i in range(3):
            with caplog.at_level(logging.INFO, logger="ecgcad"):
                assert sender.send(_with_control_id(oru, f"K{i}")) == SendOutcome.ok("MSA AA", "AA")
            wait_for(lambda i=i: sink.closed == i + 1, 2, "the sink to close the connection")
        assert sink.connections == 3 and len(sink.received) == 3
        assert "kept connection is gone" not in caplog.text  # seen closed before sending, not sent twice
        sender.close()
    finally:
        sink.close()


def test_mllp_connection_dead_at_send_time_is_replaced_and_the_message_sent_again(oru):
    sink = MllpSink("AA", per_connection=None)
    try:
        sender = MllpSender("127.0.0.1", sink.port, timeout=5, keep_open_s=30)
        first, second = _with_control_id(oru, "K1"), _with_control_id(oru, "K2")
        assert sender.send(first).delivered
        sink.drop_next = True  # reads the next message, then closes without an acknowledgement
        assert sender.send(second) == SendOutcome.ok("MSA AA", "AA")
        assert sink.received == [first, second, second] and sink.connections == 2
        sender.close()
    finally:
        sink.close()


def test_mllp_no_acknowledgement_on_a_kept_connection_is_not_resent(oru):
    sink = MllpSink("AA", per_connection=None)
    try:
        sender = MllpSender("127.0.0.1", sink.port, timeout=0.5, keep_open_s=30)
        assert sender.send(_with_control_id(oru, "K1")).delivered
        sink.mode = "none"
        outcome = sender.send(_with_control_id(oru, "K2"))
        assert not outcome.delivered and outcome.retryable and "no acknowledgement" in outcome.response
        assert len(sink.received) == 2
        sink.mode = "AA"
        assert sender.send(_with_control_id(oru, "K3")).delivered
        assert sink.connections == 2  # the connection that timed out was closed, not reused
        sender.close()
    finally:
        sink.close()


def test_mllp_idle_connection_is_closed_after_keep_open_s(oru):
    sink = MllpSink("AA", per_connection=None)
    try:
        sender = MllpSender("127.0.0.1", sink.port, timeout=5, keep_open_s=0.3)
        assert sender.send(_with_control_id(oru, "K1")).delivered
        wait_for(lambda: sink.closed == 1, 2, "the idle connection to be closed")
        assert sender.send(_with_control_id(oru, "K2")).delivered
        assert sink.connections == 2
        sender.close()
    finally:
        sink.close()


# -- pre-encoded Part 10 bytes --------------------------------------------------------------------------


def _data_set(part10: bytes) -> bytes:
    """The data set of Part 10 bytes (after the preamble, prefix and file meta group)."""
    return part10[144 + int.from_bytes(part10[140:144], "little") :]


class EncodedStorageScp:
    """A pynetdicom Storage SCP that records each C-STORE's data set as received (encoded), the transfer
    syntax it came in and the sender's temporary directories at that moment."""

    def __init__(self, transfer_syntaxes: list[str], tmp_root: Path | None = None) -> None:
        from pynetdicom import AE, evt

        self.received: list[tuple[bytes, str]] = []
        self.tmp_seen: list[list[tuple[str, int]]] = []
        self.statuses: list[int] = []
        self.tmp_root = tmp_root
        ae = AE(ae_title="PACS")
        for sop_class in STORE_SOP_CLASSES:
            ae.add_supported_context(sop_class, transfer_syntaxes)
        self.port = _free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Any) -> int:
        self.received.append((event.request.DataSet.getvalue(), str(event.context.transfer_syntax)))
        if self.tmp_root is not None:
            self.tmp_seen.append([(p.name, p.stat().st_mode & 0o777) for p in self.tmp_root.iterdir()])
        return self.statuses.pop(0) if self.statuses else 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither we nor pynetdicom may decode or encode a data set."""
    import pynetdicom.association

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the data set was decoded or encoded again")

    monkeypatch.setattr(pynetdicom.association, "encode", refuse)
    monkeypatch.setattr(pynetdicom.association, "dcmread", refuse)
    monkeypatch.setattr(pydicom, "dcmread", refuse)


@pytest.mark.parametrize("keep_open_s", [30, 0])
def test_part10_bytes_go_out_as_encoded_without_decoding(
    sr, ecg_dataset, ecg_bytes, keep_open_s, no_decoding
):
    scp = EncodedStorageScp([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    pdf = build_encapsulated_pdf(make_input(ecg_dataset, ecg_bytes), b"%PDF-1.4\n%%EOF\n")
    objects = [encode_part10(obj) for obj in [*_copies(sr, 2), pdf]]
    try:
        with DicomStoreSender(
            "127.0.0.1", scp.port, called_ae="PACS", timeout=5, keep_open_s=keep_open_s
        ) as sender:
            assert [sender.send(obj) for obj in objects] == [SendOutcome.ok("status 0x0000", 0)] * 3
            assert sender.associations == (1 if keep_open_s else 3)
    finally:
        scp.close()
    assert scp.received == [(_data_set(obj), ExplicitVRLittleEndian) for obj in objects]


def test_part10_bytes_to_dcmtk_storescp_land_byte_identical(storescp, sr, no_decoding):
    port, out = storescp
    objects = [encode_part10(obj) for obj in _copies(sr, 2)]
    with DicomStoreSender("127.0.0.1", port, called_ae="PACS", timeout=10, keep_open_s=30) as sender:
        assert all(sender.send(obj).delivered for obj in objects)
    stored = sorted(_data_set(p.read_bytes()) for p in out.iterdir())
    assert stored == sorted(_data_set(obj) for obj in objects)


def test_part10_bytes_are_decoded_for_a_peer_that_accepted_only_implicit_vr(sr):
    scp = EncodedStorageScp([ImplicitVRLittleEndian])
    (obj,) = _copies(sr, 1)
    try:
        for keep_open_s in (30, 0):
            with DicomStoreSender(
                "127.0.0.1", scp.port, called_ae="PACS", timeout=5, keep_open_s=keep_open_s
            ) as sender:
                assert sender.send(encode_part10(obj)) == SendOutcome.ok("status 0x0000", 0)
    finally:
        scp.close()
    assert [syntax for _, syntax in scp.received] == [ImplicitVRLittleEndian] * 2
    received = read_dataset(io.BytesIO(scp.received[0][0]), is_implicit_VR=True, is_little_endian=True)
    assert received.SOPInstanceUID == obj.SOPInstanceUID and received.PatientID == obj.PatientID


def test_part10_bytes_are_sent_from_a_private_temporary_file_removed_afterwards(
    sr, tmp_path, monkeypatch, no_decoding
):
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    scp = EncodedStorageScp([ExplicitVRLittleEndian], tmp_root=root)
    scp.statuses = [0x0000, 0xA700, 0xC000]
    try:
        with DicomStoreSender("127.0.0.1", scp.port, called_ae="PACS", timeout=5, keep_open_s=30) as sender:
            outcomes = [sender.send(encode_part10(obj)) for obj in _copies(sr, 3)]
            assert list(root.iterdir()) == []  # removed after each send, delivered or not
    finally:
        scp.close()
    assert [(o.delivered, o.retryable) for o in outcomes] == [(True, False), (False, True), (False, False)]
    assert len(scp.tmp_seen) == 3
    for seen in scp.tmp_seen:  # while the peer had the object: one directory, ours only
        ((name, mode),) = seen
        assert name.startswith("ecgcad-cstore-") and mode == 0o700


def test_part10_bytes_on_a_kept_association_that_died_are_sent_again(storescp, sr, no_decoding):
    port, out = storescp
    proxy = CuttingProxy(port)
    sender = DicomStoreSender("127.0.0.1", proxy.port, called_ae="PACS", timeout=5, keep_open_s=30)
    try:
        first, second = _copies(sr, 2)
        assert sender.send(encode_part10(first)).delivered
        proxy.cut()
        assert sender.send(encode_part10(second)) == SendOutcome.ok("status 0x0000", 0)
        assert proxy.unanswered > 0 and sender.associations == 2
        stored = {p.name.split(".", 1)[1] for p in out.iterdir()}
        assert stored == {first.SOPInstanceUID, second.SOPInstanceUID}
    finally:
        sender.close()
        proxy.close()


def test_part10_bytes_are_logged_by_the_hashed_file_meta_uid(sr, ecg_dataset, caplog):
    scp = EncodedStorageScp([ExplicitVRLittleEndian])
    (obj,) = _copies(sr, 1)
    try:
        with caplog.at_level(logging.DEBUG, logger="ecgcad"):
            outcome = DicomStoreSender("127.0.0.1", scp.port, called_ae="PACS", timeout=5).send(
                encode_part10(obj)
            )
    finally:
        scp.close()
    assert outcome.delivered
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ecgcad"))
    assert f"C-STORE sop={uid_hash(obj.SOPInstanceUID)} to 127.0.0.1" in ours
    assert obj.SOPInstanceUID not in ours and ecg_dataset.PatientID not in ours


def test_bytes_that_are_not_a_dicom_object_are_refused_before_connecting():
    sender = DicomStoreSender("127.0.0.1", _free_port(), called_ae="PACS", timeout=3)
    for payload in (b"not dicom", b"\0" * 128 + b"DICM" + b"\x02\x00"):
        with pytest.raises(BuildError):
            sender.send(payload)
    assert sender.associations == 0
