"""The MLLP server against real peers on loopback: python-hl7's mllp_send, our asyncio client, raw sockets."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent, Job, SourceObject
from ecgcad.db.session import Database
from ecgcad.integration.transport.mllp import frame
from ecgcad.listeners.hl7_server import Hl7Server
from tests.helpers import count_rows
from tests.listeners.hl7util import PATIENT_ID, PATIENT_NAME, SocketClient, asyncio_send_all, msa, oru

MLLP_SEND = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mllp_send"


def _audit_details(ctx: AppContext, event_type: str) -> list[Any]:
    with ctx.db.session() as s:
        return list(s.execute(select(AuditEvent.detail).where(AuditEvent.event_type == event_type)).scalars())


def test_mllp_send_several_messages_on_one_connection_all_get_aa(start_server: Any, tmp_path: Path) -> None:
    if not MLLP_SEND.exists():
        pytest.skip("python-hl7 mllp_send is not installed")
    server, ctx = start_server()
    ids = [f"MS{i}" for i in range(5)]
    batch = tmp_path / "batch.hl7"
    batch.write_bytes(b"".join(frame(oru(i)) for i in ids))
    r = subprocess.run(
        [str(MLLP_SEND), "-p", str(server.address[1]), "-f", str(batch), server.address[0]],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    # mllp_send exits 0 even when the peer closed: check every reply ourselves
    replies = [msa(seg) for seg in r.stdout.split(b"\n") if b"MSA|" in seg]
    assert [(m[1], m[2]) for m in replies] == [("AA", i) for i in ids]
    assert count_rows(ctx, SourceObject, SourceObject.kind == "hl7") == 5
    assert count_rows(ctx, Job, Job.kind == "hl7") == 5
    assert _audit_details(ctx, "hl7.connection")


def test_asyncio_client_gets_aa_only_for_committed_messages(start_server: Any) -> None:
    server, ctx = start_server()
    msgs = [oru(f"A{i}") for i in range(20)]
    acks = asyncio.run(asyncio_send_all(server.address, msgs))
    assert [msa(a)[1:3] for a in acks] == [["AA", f"A{i}"] for i in range(20)]
    assert count_rows(ctx, SourceObject) == 20


def test_retransmission_is_acknowledged_without_a_second_job(start_server: Any) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    assert msa(client.send(oru("R1")))[1] == "AA"
    assert msa(client.send(oru("R1")))[1] == "AA"
    client.close()
    assert count_rows(ctx, Job) == 1


def test_broken_frames_split_batched_and_garbage_prefixed_are_all_answered(start_server: Any) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    data = frame(oru("S1"))
    for i in range(0, len(data), 7):  # one frame in 7-byte pieces
        client.send_raw(data[i : i + 7])
        time.sleep(0.001)
    assert msa(client.recv_ack())[1:3] == ["AA", "S1"]
    client.send_raw(b"noise before start\r\n" + frame(oru("S2")) + frame(oru("S3")))
    assert [msa(client.recv_ack())[2] for _ in range(2)] == ["S2", "S3"]
    client.close()
    assert count_rows(ctx, SourceObject) == 3


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"this is not hl7", "no MSH"),
        (b"PID|1||42\r", "no MSH"),
        (b"MSH|^~\\&|A|B|C|D|2024||ORU^R01||P|2.5.1\r", "MSH-10"),
        (b"MSH|^~\\&|A|B|C|D|2024||QRY^A19|Q1|P|2.5.1\r", "QRY\\S\\A19"),
    ],
)
def test_not_hl7_or_unsupported_type_gets_ar_with_err_and_is_audited(
    start_server: Any, payload: bytes, reason: str
) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    ack = client.send(payload)
    assert msa(ack)[1] == "AR"
    assert reason in msa(ack)[3]
    assert b"\rERR|" in ack
    # the connection stays usable
    assert msa(client.send(oru("OK1")))[1] == "AA"
    client.close()
    assert count_rows(ctx, SourceObject) == 1
    assert _audit_details(ctx, "hl7.rejected")


def test_other_types_are_stored_and_acknowledged_when_configured(start_server: Any) -> None:
    server, ctx = start_server(hl7={"accept_other_types": True})
    client = SocketClient(server.address)
    assert msa(client.send(b"MSH|^~\\&|A|B|C|D|2024||QRY^A19|Q1|P|2.5.1\r"))[1] == "AA"
    client.close()


def test_orders_and_adt_are_accepted(start_server: Any) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    for t in ("ORM^O01", "OMG^O19^OMG_O19", "ADT^A08"):
        assert (
            msa(client.send(f"MSH|^~\\&|A|B|C|D|2024||{t}|{t[:3]}1|P|2.5.1\rPID|1||P1\r".encode()))[1] == "AA"
        )
    client.close()


def test_enhanced_mode_sends_ca_and_honours_ne_and_er(start_server: Any) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    assert msa(client.send(oru("E1", msh15="AL")))[1:3] == ["CA", "E1"]
    client.send_raw(frame(oru("E2", msh15="NE")))  # stored, never acknowledged
    client.send_raw(frame(oru("E3", msh15="ER")))  # stored, acknowledged only on error
    assert msa(client.send(oru("E4", msh15="SU")))[1:3] == ["CA", "E4"]
    client.close()
    assert count_rows(ctx, SourceObject) == 4


def test_oversized_frame_gets_ar_and_the_connection_is_closed(start_server: Any) -> None:
    server, ctx = start_server(hl7={"max_message_bytes": 2000})
    client = SocketClient(server.address)
    assert msa(client.send(oru("small")))[1] == "AA"
    ack = client.send(oru("big", extra="x" * 5000))
    assert msa(ack)[1] == "AR"
    assert client.closed_by_server()
    client.close()
    assert {"reason": "message too large", "limit": 2000} in _audit_details(ctx, "hl7.rejected")


def test_idle_connection_is_closed(start_server: Any) -> None:
    server, _ = start_server(hl7={"idle_timeout_s": 0.3})
    client = SocketClient(server.address, timeout=5)
    t0 = time.monotonic()
    assert client.closed_by_server()
    assert time.monotonic() - t0 < 4
    client.close()


def test_connection_cap_refuses_extra_connections(start_server: Any) -> None:
    server, ctx = start_server(hl7={"max_connections": 1})
    first = SocketClient(server.address)
    assert msa(first.send(oru("C1")))[1] == "AA"
    second = SocketClient(server.address)
    assert second.closed_by_server()
    second.close()
    first.close()
    assert {"reason": "connection limit reached"} in _audit_details(ctx, "hl7.rejected")


def test_database_failure_gives_ae_and_nothing_is_acknowledged(start_server: Any) -> None:
    server, ctx = start_server()
    failing = Database(ctx.db.url)

    @event.listens_for(failing.engine, "connect")
    def _read_only(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only=ON")

    ctx.ingestor.db = failing
    client = SocketClient(server.address)
    try:
        ack = client.send(oru("F1"))
    finally:
        ctx.ingestor.db = ctx.db
        failing.dispose()
    assert msa(ack)[1] == "AE"
    assert b"\rERR|" in ack
    assert count_rows(ctx, SourceObject) == 0
    # the sender retries and the message is stored once
    assert msa(client.send(oru("F1")))[1] == "AA"
    client.close()
    assert count_rows(ctx, SourceObject) == 1


def test_back_pressure_gives_ae(start_server: Any) -> None:
    server, ctx = start_server(queue={"max_depth": 1})
    with ctx.db.session() as s:
        ctx.queue.defer(s, "score", {"ecg_id": 0})
    client = SocketClient(server.address)
    assert msa(client.send(oru("B1")))[1] == "AE"
    client.close()


# -- no PHI in logs, on every path a message or a connection can be refused ----------------------------------
_PID = PATIENT_ID.encode()
_NAME = PATIENT_NAME.encode()
_PHI_SEGMENT = b"PID|1||" + _PID + b"^^^HOSP^MR||" + _NAME + b"||19600101|M\r"


def _phi_msh(*fields: bytes, fs: bytes = b"|") -> bytes:
    """``MSH`` + fs + ``fields`` joined by ``fs`` + CR + a PID segment carrying the test patient."""
    return b"MSH" + fs + fs.join(fields) + b"\r" + _PHI_SEGMENT


def _answers(client: SocketClient) -> list[str]:
    """MSA-1 of every answer until the server closes the connection."""
    out: list[str] = []
    while True:
        try:
            out.append(msa(client.recv_ack())[1])
        except ConnectionError:
            return out


def _phi_accepted_and_unsupported_type(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    assert msa(client.send(oru("L1")))[1] == "AA"
    assert msa(client.send(b"MSH|^~\\&|A|B|C|D|2024||QRY^A19|Q1|P|2.5.1\r" + _PHI_SEGMENT))[1] == "AR"
    client.close()


def _phi_name_in_msh9(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    message = _phi_msh(b"^~\\&", b"A", b"B", b"C", b"D", b"2024", b"", _NAME, b"Q2", b"P", b"2.5.1")
    assert msa(client.send(message))[1] == "AR"
    client.close()


def _phi_form_feed_in_msh(server: Hl7Server, ctx: AppContext) -> None:
    # a form feed where the sender meant a segment break: PID's fields slide into MSH-5 ... MSH-10
    client = SocketClient(server.address)
    message = b"MSH|^~\\&|A|B\x0cPID|1||" + _PID + b"||" + _NAME + b"|Q3|P|2.5.1\r"
    assert msa(client.send(message))[1] == "AR"
    client.close()


def _phi_form_feed_as_msh1(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    message = _phi_msh(b"^~\\&", _NAME, b"B", b"C", b"D", b"2024", b"", _NAME, _PID, fs=b"\x0c")
    assert msa(client.send(message))[1] == "AR"
    client.close()


def _phi_vertical_tab_as_msh1(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address, timeout=5)
    message = _phi_msh(b"^~\\&", _NAME, b"B", b"C", b"D", b"2024", b"", b"ORU^R01", _PID, fs=b"\x0b")
    client.send_raw(b"\x0b" + message + b"\x1c\r")
    answers = _answers(client)  # ARs until max_consecutive_rejections closes the connection
    client.close()
    assert answers and set(answers) == {"AR"}


def _phi_no_msh(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    assert msa(client.send(_PHI_SEGMENT))[1] == "AR"
    client.close()


def _phi_empty_msh10(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    message = _phi_msh(b"^~\\&", _NAME, _PID, b"C", b"D", b"2024", b"", b"ORU^R01", b"", b"P", b"2.5.1")
    assert msa(client.send(message))[1] == "AR"
    client.close()


def _phi_bad_encoding_characters(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    message = _phi_msh(_NAME, _PID, b"C", b"D", b"2024", b"", b"ORU^R01", b"Q5", b"P", b"2.5.1")
    assert msa(client.send(message))[1] == "AR"
    client.close()


def _phi_glued_frames(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    client.send_raw(b"\x0b" + oru("GLUED-A") + frame(oru("GLUED-B")))
    assert [msa(client.recv_ack())[1] for _ in range(2)] == ["AR", "AA"]
    client.close()


def _phi_oversized_frame(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    assert msa(client.send(oru("BIG", extra=PATIENT_NAME * 200)))[1] == "AR"
    assert client.closed_by_server()
    client.close()


def _phi_rejections_in_a_row(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address, timeout=5)
    client.send_raw(frame(_PHI_SEGMENT) * 3)
    answers = _answers(client)
    client.close()
    assert answers == ["AR", "AR"]


def _phi_back_pressure(server: Hl7Server, ctx: AppContext) -> None:
    with ctx.db.session() as s:
        ctx.queue.defer(s, "score", {"ecg_id": 0})
    client = SocketClient(server.address)
    assert msa(client.send(oru("BP1")))[1] == "AE"
    client.close()


def _phi_storage_failure(server: Hl7Server, ctx: AppContext) -> None:
    failing = Database(ctx.db.url)

    @event.listens_for(failing.engine, "connect")
    def _read_only(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only=ON")

    ctx.ingestor.db = failing
    client = SocketClient(server.address)
    try:
        assert msa(client.send(oru("SF1")))[1] == "AE"
    finally:
        ctx.ingestor.db = ctx.db
        failing.dispose()
        client.close()


def _phi_idle_inside_a_frame(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address, timeout=5)
    client.send_raw(b"\x0b" + oru("IDLE1"))  # never ended
    assert client.closed_by_server()
    client.close()


def _phi_peer_closes_inside_a_frame(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address)
    assert msa(client.send(oru("PC1")))[1] == "AA"
    client.send_raw(b"\x0b" + oru("PC2"))  # never ended
    client.close()
    deadline = time.monotonic() + 10  # the server notices the close on its own time
    while server.connection_count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connection_count == 0


def _phi_address_not_allowed(server: Hl7Server, ctx: AppContext) -> None:
    client = SocketClient(server.address, timeout=5)
    client.send_raw(frame(oru("NA1")))
    assert client.closed_by_server()
    client.close()


def _phi_connection_refused(server: Hl7Server, ctx: AppContext) -> None:
    first = SocketClient(server.address)
    assert msa(first.send(oru("CR1")))[1] == "AA"
    second = SocketClient(server.address, timeout=5)
    assert second.closed_by_server()
    second.close()
    first.close()


#: Every path on which the HL7 listener refuses a message or a connection: settings, the peer's actions
#: (which assert that the path was taken) and a fragment of the log line that path writes.
PHI_PATHS: dict[str, tuple[dict[str, Any], Callable[[Hl7Server, AppContext], None], str]] = {
    "accepted-and-unsupported-type": ({}, _phi_accepted_and_unsupported_type, "rejected QRY^A19"),
    "name-in-msh9": ({}, _phi_name_in_msh9, "rejected type#"),
    "form-feed-in-msh": ({}, _phi_form_feed_in_msh, "rejected type#"),
    "form-feed-as-msh1": ({}, _phi_form_feed_as_msh1, "invalid field separator"),
    "0x0b-as-msh1": ({"hl7": {"max_consecutive_rejections": 3}}, _phi_vertical_tab_as_msh1, "in a row"),
    "no-msh": ({}, _phi_no_msh, "no MSH segment"),
    "empty-msh10": ({}, _phi_empty_msh10, "MSH-10"),
    "bad-encoding-characters": ({}, _phi_bad_encoding_characters, "encoding characters"),
    "glued-frames": ({}, _phi_glued_frames, "cut short by a start block"),
    "oversized-frame": ({"hl7": {"max_message_bytes": 2000}}, _phi_oversized_frame, "over 2000 bytes"),
    "rejections-in-a-row": ({"hl7": {"max_consecutive_rejections": 2}}, _phi_rejections_in_a_row, "in a row"),
    "back-pressure": ({"queue": {"max_depth": 1}}, _phi_back_pressure, "back-pressure"),
    "storage-failure": ({}, _phi_storage_failure, "storage failed"),
    "idle-inside-a-frame": (
        {"hl7": {"idle_timeout_s": 0.3}},
        _phi_idle_inside_a_frame,
        "no accepted message",
    ),
    "peer-closes-inside-a-frame": ({}, _phi_peer_closes_inside_a_frame, "closed inside a frame"),
    "address-not-allowed": (
        {"hl7": {"allowed_addresses": ["10.9.9.9"]}},
        _phi_address_not_allowed,
        "address not allowed",
    ),
    "connection-limit": ({"hl7": {"max_connections": 1}}, _phi_connection_refused, "connections open"),
    "connection-limit-per-address": (
        {"hl7": {"max_connections_per_address": 1}},
        _phi_connection_refused,
        "from this address open",
    ),
}


@pytest.mark.parametrize("path", list(PHI_PATHS))
def test_logs_carry_no_patient_data(start_server: Any, caplog: pytest.LogCaptureFixture, path: str) -> None:
    caplog.set_level(logging.DEBUG, logger="ecgcad")
    overrides, peer, fragment = PHI_PATHS[path]
    server, ctx = start_server(**overrides)
    peer(server, ctx)
    server.stop()  # every log line of the connection is written
    text = caplog.text
    for phi in (PATIENT_ID, *PATIENT_NAME.split("^")):
        assert phi not in text, f"{phi} in a log line on the {path} path"
    assert fragment in text, f"the {path} path was not taken"
    if path == "accepted-and-unsupported-type":
        assert "L1" not in text  # MSH-10 is logged hashed


def test_server_restarts_cleanly_and_reports_alive(start_server: Any) -> None:
    server, _ = start_server()
    assert server.alive
    server.stop()
    assert not server.alive
