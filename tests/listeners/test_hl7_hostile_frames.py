"""Broken and hostile MLLP streams against the HL7 listener on loopback (raw sockets): frames glued by a
missing end block, control characters as MSH delimiters, keep-alive frames answered AR, and peers that try to
hold connection slots with them. Ends with a bounded structure-aware fuzz of whole streams."""

from __future__ import annotations

import functools
import itertools
import os
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent, SourceObject
from ecgcad.integration.transport.mllp import frame
from ecgcad.testing import ecg_writers as w
from tests.listeners.hl7util import PATIENT_ID, SocketClient, msa, oru

KEEPALIVE = b"\x0b\x1c\r"


def _message_a() -> bytes:
    """PATIENT-A's ORU (no waveform: the sender lost its end block)."""
    return oru("MSG-A").replace(PATIENT_ID.encode(), b"PATIENT-A")


@functools.cache
def _message_b() -> bytes:
    """PATIENT-B's ORU with an embedded DICOM waveform."""
    x = w.real_signal(250.0, seconds=2.0)
    return w.write_hl7_oru_ed(w.build_dicom_ecg(x, 250), control_id="MSG-B", patient_id="PATIENT-B")


def _stored(ctx: AppContext) -> list[tuple[str | None, bytes]]:
    """``(MSH-10, bytes)`` of every stored HL7 message, in order of arrival."""
    with ctx.db.session() as s:
        rows = s.execute(
            select(SourceObject.message_control_id, SourceObject.content).order_by(SourceObject.id)
        ).all()
    return [(control_id, bytes(content or b"")) for control_id, content in rows]


def _rejection_reasons(ctx: AppContext) -> list[Any]:
    with ctx.db.session() as s:
        details = s.execute(
            select(AuditEvent.detail).where(AuditEvent.event_type == "hl7.rejected")
        ).scalars()
        return [d.get("reason") for d in details if d]


def _acks_until_closed(client: SocketClient) -> list[bytes]:
    """Every ACK the server sends until it closes the connection (a socket timeout fails the test)."""
    acks: list[bytes] = []
    while True:
        try:
            acks.append(client.recv_ack())
        except ConnectionError:
            return acks


def _odd_delimiter_message(control_id: str, *, msh1: bytes = b"|", msh2: bytes = b"^~\\&") -> bytes:
    """An ORU whose MSH-1 / MSH-2 are replaced (every field separator of the message too)."""
    message = oru(control_id).replace(b"|", msh1)
    return b"MSH" + msh1 + msh2 + message[3 + len(msh1) + 4 :]


# -- item 4: glued frames, 0x0B and other control characters as delimiters ---------------------------------
@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-by-byte"])
def test_start_block_inside_an_unterminated_frame_rejects_it_and_stores_the_next_message_on_its_own(
    start_server: Any, split: bool
) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    stream = b"\x0b" + _message_a() + frame(_message_b())  # A's end block is missing
    if split:
        for i in range(len(stream)):
            client.send_raw(stream[i : i + 1])
    else:
        client.send_raw(stream)
    first = client.recv_ack()
    assert msa(first)[1:3] == ["AR", "MSG-A"]
    assert b"\rERR|" in first
    assert msa(client.recv_ack())[1:3] == ["AA", "MSG-B"]
    client.close()
    # B is stored byte for byte under its own header; nothing of A is, and A is not scored from B's waveform
    assert _stored(ctx) == [("MSG-B", _message_b())]


def test_message_with_0x0b_as_field_separator_is_refused_with_ar_and_never_stored(start_server: Any) -> None:
    server, ctx = start_server(hl7={"max_consecutive_rejections": 1000})
    client = SocketClient(server.address, timeout=5)
    message = _odd_delimiter_message("VT1", msh1=b"\x0b")
    client.send_raw(b"\x0b" + message + b"\x1c\r")
    # every start block opens a frame: each piece is answered AR, none is stored, none acknowledged AA
    answers = [msa(client.recv_ack())[1] for _ in range(message.count(b"\x0b") + 1)]
    assert answers == ["AR"] * len(answers)
    # the connection is answered, not dropped, and still serves
    assert msa(client.send(oru("AFTER-VT")))[1:3] == ["AA", "AFTER-VT"]
    client.close()
    assert [control_id for control_id, _ in _stored(ctx)] == ["AFTER-VT"]


@pytest.mark.parametrize("control", [b"\x0c", b"\x00", b"\x1b", b"\x7f", b"\x85", b"\t"], ids=repr)
@pytest.mark.parametrize("where", ["MSH-1", "MSH-2"])
def test_control_character_as_msh_delimiter_is_refused_with_ar_before_storing(
    start_server: Any, control: bytes, where: str
) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    if where == "MSH-1":
        message = _odd_delimiter_message("CC1", msh1=control)
    else:
        message = _odd_delimiter_message("CC1", msh2=b"^" + control + b"\\&")
    ack = client.send(message)
    assert msa(ack)[1] == "AR"
    assert b"\rERR|" in ack
    assert msa(client.send(oru("CC-OK")))[1] == "AA"
    client.close()
    assert [control_id for control_id, _ in _stored(ctx)] == ["CC-OK"]


# -- item 7: connection slots --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_keepalives_answered_ar_do_not_hold_a_connection_past_idle_timeout(start_server: Any) -> None:
    idle_s = 1.0
    server, ctx = start_server(hl7={"idle_timeout_s": idle_s, "max_consecutive_rejections": 1000})
    client = SocketClient(server.address, timeout=5)
    assert msa(client.send(oru("KA1")))[1] == "AA"
    # a keep-alive every quarter of the idle timeout: each is answered AR, none is an accepted message
    deadline = time.monotonic() + idle_s + 10.0
    answers: list[str] = []
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            client.send_raw(KEEPALIVE)
            answers.append(msa(client.recv_ack())[1])
        except (ConnectionError, OSError):
            closed = True
            break
        time.sleep(idle_s / 4)
    client.close()
    assert answers and set(answers) == {"AR"}
    assert closed, f"a peer sending keep-alives answered AR held its slot for {idle_s + 10:.0f} s"


def test_consecutive_rejections_close_the_connection_and_an_accepted_message_resets_the_count(
    start_server: Any,
) -> None:
    server, ctx = start_server(hl7={"max_consecutive_rejections": 3})
    client = SocketClient(server.address, timeout=5)
    for _ in range(2):
        assert msa(client.send(b""))[1] == "AR"  # the keep-alive frame: 0x0B 0x1C 0x0D
    assert msa(client.send(oru("RJ1")))[1] == "AA"  # resets the count
    for _ in range(2):
        assert msa(client.send(b""))[1] == "AR"
    # a flood in one write: answered up to the limit, the rest neither answered nor stored, then closed
    client.send_raw(KEEPALIVE * 1000 + frame(oru("RJ-AFTER")))
    acks = _acks_until_closed(client)
    client.close()
    assert [msa(a)[1] for a in acks] == ["AR"]
    assert [control_id for control_id, _ in _stored(ctx)] == ["RJ1"]
    assert _rejection_reasons(ctx).count("too many rejected messages in a row") == 1


def test_connections_from_one_address_are_capped(start_server: Any) -> None:
    server, ctx = start_server(hl7={"max_connections_per_address": 2, "max_connections": 50})
    first, second = SocketClient(server.address), SocketClient(server.address)
    assert msa(first.send(oru("PA1")))[1] == "AA"
    assert msa(second.send(oru("PA2")))[1] == "AA"
    third = SocketClient(server.address, timeout=5)
    assert third.closed_by_server()
    third.close()
    assert "connection limit per address reached" in _rejection_reasons(ctx)
    # a slot freed is a slot again (the server notices the close asynchronously: poll with a deadline)
    first.close()
    deadline = time.monotonic() + 10
    answer = ""
    while time.monotonic() < deadline and answer != "AA":
        retry = SocketClient(server.address, timeout=5)
        try:
            answer = msa(retry.send(oru("PA3")))[1]
        except (ConnectionError, OSError):
            time.sleep(0.05)
        finally:
            retry.close()
    second.close()
    assert answer == "AA"


# -- fuzz: whole streams of good, glued, odd and keep-alive frames ------------------------------------------
FUZZ = settings(
    max_examples=int(os.environ.get("ECGCAD_FUZZ_EXAMPLES", "25")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_NOISE = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
PIECES = st.one_of(
    st.tuples(st.sampled_from(["good", "unterminated", "keepalive"]), st.just(b"")),
    st.tuples(
        st.just("odd-msh1"), st.sampled_from([b"\x0b", b"\x0c", b"\x00", b"\x1b", b"\x7f", b"\r", b"\n"])
    ),
    st.tuples(st.just("odd-msh2"), st.sampled_from([b"\x0b", b"\x0c", b"\x00", b"\x07", b"\x7f"])),
    # bytes outside frames, or appended to an unterminated one: anything but the block characters
    st.tuples(st.just("noise"), _NOISE),
)


def _piece(kind: str, extra: bytes, control_id: str) -> bytes:
    if kind == "good":
        return frame(oru(control_id))
    if kind == "unterminated":
        return b"\x0b" + oru(control_id)
    if kind == "keepalive":
        return KEEPALIVE
    if kind == "odd-msh1":
        return b"\x0b" + _odd_delimiter_message(control_id, msh1=extra) + b"\x1c\r"
    if kind == "odd-msh2":
        return b"\x0b" + _odd_delimiter_message(control_id, msh2=b"^" + extra + b"\\&") + b"\x1c\r"
    return extra


@pytest.mark.timeout(300)
def test_fuzzed_streams_acknowledge_exactly_the_whole_frames_and_store_them_unchanged(
    start_server: Any,
) -> None:
    server, ctx = start_server(hl7={"max_consecutive_rejections": 100_000})
    ids = itertools.count()
    whole: set[str] = set()  # control ids of every whole, well-formed frame sent so far

    @FUZZ
    @given(pieces=st.lists(PIECES, min_size=1, max_size=12), chunk=st.sampled_from([0, 1, 7, 4096]))
    def one_stream(pieces: list[tuple[str, bytes]], chunk: int) -> None:
        stream = bytearray()
        good: list[str] = []
        for kind, extra in pieces:
            control_id = f"FZ{next(ids)}"
            stream += _piece(kind, extra, control_id)
            if kind == "good":
                good.append(control_id)
        end_id = f"FZEND{next(ids)}"
        stream += frame(oru(end_id))
        whole.update((*good, end_id))
        client = SocketClient(server.address, timeout=10)
        try:
            step = chunk or len(stream)
            for i in range(0, len(stream), step):
                client.send_raw(bytes(stream[i : i + step]))
            answers: list[list[str]] = []
            while not answers or answers[-1][2] != end_id:
                answers.append(msa(client.recv_ack()))
        finally:
            client.close()
        # exactly the whole, well-formed frames are acknowledged, in order; everything else is refused
        assert [a[2] for a in answers if a[1] == "AA"] == [*good, end_id]
        assert {a[1] for a in answers} <= {"AA", "AR"}
        stored = dict(_stored(ctx))
        assert set(stored) <= whole
        for control_id in (*good, end_id):
            assert stored[control_id] == oru(control_id)

    one_stream()
