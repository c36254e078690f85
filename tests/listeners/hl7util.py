"""HL7 test messages and a small asyncio MLLP client (our second, independent MLLP peer)."""

from __future__ import annotations

import asyncio
import socket

from ecgcad.integration.transport.mllp import MllpDecoder, frame

PATIENT_NAME = "TESTPATIENT^SECRET"
PATIENT_ID = "PID-SECRET-4711"


def oru(control_id: str, *, msh15: str = "", extra: str = "") -> bytes:
    """An ORU^R01 message (v2.5.1) with a recognisable test patient."""
    ack = f"|||{msh15}|" if msh15 else ""
    return (
        f"MSH|^~\\&|CART|WARD|ECGCAD|HOSP|20240101120000||ORU^R01^ORU_R01|{control_id}|P|2.5.1{ack}\r"
        f"PID|1||{PATIENT_ID}^^^HOSP^MR||{PATIENT_NAME}||19600101|M\r"
        f"ORC|RE|PL-{control_id}|FI-{control_id}\r"
        f"OBR|1|PL-{control_id}|FI-{control_id}|93000^ECG^CPT|||20240101115500\r"
        f"OBX|1|ST|TEXT||resting ECG {extra}||||||F\r"
    ).encode()


def msa(ack: bytes) -> list[str]:
    """The MSA fields of an ACK (``["MSA", code, control id, ...]``)."""
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA"):
            return seg.decode("latin-1").split("|")
    raise AssertionError(f"no MSA in {ack!r}")


class SocketClient:
    """A blocking raw-socket peer (for scripted, possibly broken, byte streams)."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.decoder = MllpDecoder()
        self.pending: list[bytes] = []

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_ack(self) -> bytes:
        """The next ACK; raises ``ConnectionError`` when the server closed first."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def send(self, message: bytes) -> bytes:
        self.send_raw(frame(message))
        return self.recv_ack()

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.sock.close()


async def asyncio_send_all(
    address: tuple[str, int], messages: list[bytes], *, timeout: float = 10.0
) -> list[bytes]:
    """Send ``messages`` over one persistent connection, each after the previous ACK; return the ACKs."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    decoder = MllpDecoder()
    acks: list[bytes] = []
    pending: list[bytes] = []
    try:
        for message in messages:
            writer.write(frame(message))
            await writer.drain()
            while not pending:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    raise ConnectionError("server closed the connection")
                pending += decoder.feed(data)
            acks.append(pending.pop(0))
    finally:
        writer.close()
        await writer.wait_closed()
    return acks
