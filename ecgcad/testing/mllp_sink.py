"""A minimal MLLP sink that acknowledges every message with ``AA`` and prints (or saves) what it got.

For demonstrations and integration tests: ``python -m ecgcad.testing.mllp_sink --port 2576 --out DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from pathlib import Path

from ecgcad.integration.transport.mllp import MllpDecoder, MllpFrameTooLarge, UnterminatedFrame, frame


def ack_for(message: bytes, code: str = "AA") -> bytes:
    """An original-mode ACK echoing MSH-10 (sending/receiving applications swapped)."""
    msh = message.split(b"\r", 1)[0].split(b"|")
    field = lambda n: msh[n] if len(msh) > n else b""  # noqa: E731
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S").encode()
    return (
        b"MSH|^~\\&|"
        + field(4)
        + b"|"
        + field(5)
        + b"|"
        + field(2)
        + b"|"
        + field(3)
        + b"|"
        + now
        + b"||ACK|ACK"
        + field(9)[:17]
        + b"|P|2.5.1\rMSA|"
        + code.encode()
        + b"|"
        + field(9)
        + b"\r"
    )


async def serve(host: str, port: int, out: Path | None) -> None:
    """Run until cancelled."""
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        decoder = MllpDecoder()
        try:
            while data := await reader.read(65536):
                for msg in decoder.feed(data):
                    if isinstance(msg, UnterminatedFrame):
                        continue  # a frame cut short by the next start block: not a message
                    count += 1
                    if out is not None:
                        (out / f"message-{count:06d}.hl7").write_bytes(msg)
                    print(msg.decode("utf-8", "replace").replace("\r", "\n"), flush=True)
                    writer.write(frame(ack_for(msg)))
                await writer.drain()
        except (ConnectionError, MllpFrameTooLarge):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    print(f"MLLP sink listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2576)
    parser.add_argument("--out", type=Path, default=None, help="Folder to save each message in.")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(args.host, args.port, args.out))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
