"""Independent peers for tests: dcmtk storescp, an MLLP sink, free ports, waiting helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


class StoreScp:
    """dcmtk ``storescp`` writing every received object into ``folder``."""

    def __init__(self, folder: Path, ae_title: str = "PACS") -> None:
        require("storescp")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # TCP_NODELAY=1: without it dcmtk holds back the second part of each response for the peer's
        # delayed ACK (~40 ms per C-STORE), a property of the tool, not of the sender under test.
        self.proc = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(folder), "--accept-all", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        wait_port(self.port)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class MllpSink:
    """An MLLP server that records messages and answers ``AA`` (or ``ack_code``) echoing MSH-10."""

    def __init__(self, ack_code: str = "AA") -> None:
        self.ack_code = ack_code
        self.messages: list[bytes] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await reader.readuntil(b"\x1c\x0d")
                    msg = data[data.index(b"\x0b") + 1 : -2]
                    self.messages.append(msg)
                    msh = msg.split(b"\r", 1)[0].split(b"|")
                    control = msh[9] if len(msh) > 9 else b""
                    ack = (
                        b"MSH|^~\\&|SINK||ECGCAD||20260101000000||ACK^R01^ACK|A"
                        + control
                        + b"|P|2.5.1\rMSA|"
                        + self.ack_code.encode()
                        + b"|"
                        + control
                        + b"\r"
                    )
                    writer.write(b"\x0b" + ack + b"\x1c\x0d")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def main() -> None:
            self._server = await asyncio.start_server(handle, "127.0.0.1", self.port)
            self._ready.set()
            await self._server.serve_forever()

        try:
            self._loop.run_until_complete(main())
        except (asyncio.CancelledError, RuntimeError):
            pass

    def stop(self) -> None:
        def _close() -> None:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(_close)
        self._thread.join(5)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
