"""Senders against real peers on loopback: dcmtk storescp, a refusing port, and an asyncio MLLP sink."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from ecgcad.errors import DeliveryError, PermanentDeliveryError
from ecgcad.integration.oru import build_oru
from ecgcad.integration.senders import (
    DicomStoreSender,
    MllpSender,
    Sender,
    SendOutcome,
    mllp_frame,
    parse_ack,
)
from ecgcad.integration.sr import build_stenosis_sr
from ecgcad.testing.fake_senders import FakeSender, RefusingSender, RetryingSender
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
    proc = subprocess.Popen(
        [exe, "-od", str(out), "-aet", "PACS", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, proc)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
    """An asyncio MLLP server in a thread that answers each message with a scripted acknowledgement."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.received: list[bytes] = []
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
        try:
            data = await reader.readuntil(b"\x1c\x0d")
            message = data[data.index(b"\x0b") + 1 : -2]
            self.received.append(message)
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
        finally:
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
