"""The MLLP server against real peers on loopback: python-hl7's mllp_send, our asyncio client, raw sockets."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent, Job, SourceObject
from ecgcad.db.session import Database
from ecgcad.integration.mllp import frame
from tests.listeners.hl7util import PATIENT_ID, PATIENT_NAME, SocketClient, asyncio_send_all, msa, oru

MLLP_SEND = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mllp_send"


def _count(ctx: AppContext, model: Any, *where: Any) -> int:
    with ctx.db.session() as s:
        return int(s.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


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
    assert _count(ctx, SourceObject, SourceObject.kind == "hl7") == 5
    assert _count(ctx, Job, Job.kind == "hl7") == 5
    assert _audit_details(ctx, "hl7.connection")


def test_asyncio_client_gets_aa_only_for_committed_messages(start_server: Any) -> None:
    server, ctx = start_server()
    msgs = [oru(f"A{i}") for i in range(20)]
    acks = asyncio.run(asyncio_send_all(server.address, msgs))
    assert [msa(a)[1:3] for a in acks] == [["AA", f"A{i}"] for i in range(20)]
    assert _count(ctx, SourceObject) == 20


def test_retransmission_is_acknowledged_without_a_second_job(start_server: Any) -> None:
    server, ctx = start_server()
    client = SocketClient(server.address)
    assert msa(client.send(oru("R1")))[1] == "AA"
    assert msa(client.send(oru("R1")))[1] == "AA"
    client.close()
    assert _count(ctx, Job) == 1


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
    assert _count(ctx, SourceObject) == 3


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
    assert _count(ctx, SourceObject) == 1
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
    assert _count(ctx, SourceObject) == 4


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
    assert _count(ctx, SourceObject) == 0
    # the sender retries and the message is stored once
    assert msa(client.send(oru("F1")))[1] == "AA"
    client.close()
    assert _count(ctx, SourceObject) == 1


def test_back_pressure_gives_ae(start_server: Any) -> None:
    server, ctx = start_server(queue={"max_depth": 1})
    with ctx.db.session() as s:
        ctx.queue.defer(s, "score", {"ecg_id": 0})
    client = SocketClient(server.address)
    assert msa(client.send(oru("B1")))[1] == "AE"
    client.close()


def test_logs_carry_no_patient_data(start_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ecgcad")
    server, _ = start_server()
    client = SocketClient(server.address)
    client.send(oru("L1"))
    client.send(b"MSH|^~\\&|A|B|C|D|2024||QRY^A19|Q1|P|2.5.1\rPID|1||" + PATIENT_ID.encode() + b"\r")
    client.close()
    text = caplog.text
    assert PATIENT_ID not in text and PATIENT_NAME.split("^")[0] not in text
    assert "L1" not in text  # MSH-10 is logged hashed


def test_server_restarts_cleanly_and_reports_alive(start_server: Any) -> None:
    server, _ = start_server()
    assert server.alive
    server.stop()
    assert not server.alive
