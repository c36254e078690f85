"""Ingest throughput, side by side in one run: our durable listeners vs non-durable baselines.

* DICOM: C-STORE/s of pydicom's real ECG (``waveform_ecg.dcm``, N copies with new SOP Instance UIDs) over one
  association from dcmtk ``storescu`` (``TCP_NODELAY=1``) into our SCP (decode + fsync + commit before
  ``0x0000``) vs into a bare pynetdicom SCP that only decodes the waveform. Target ≥ 1.0×.
* HL7: ORU^R01 messages/s over one persistent MLLP connection into our server (fsync + commit before
  ``AA``) vs python-hl7's asyncio echo server. Target ≥ 0.6×. Three senders, each against both servers:

  - python-hl7's own asyncio MLLP client, stop-and-wait (each message after the previous ACK, which it
    parses): an independent peer, and the setup that gives the echo server the ~1,750 msg/s of the issue;
  - a minimal client of ours, stop-and-wait, that does no work at all besides framing: the strictest
    figure, since the server is then the only cost (shown, not the target's measure);
  - the same minimal client with 32 messages in flight.

Both sides run at once and are measured in alternating rounds; each figure is the median of its rounds.

Run: ``.venv/bin/python bench/bench_ingest.py [--dicom N] [--hl7 N]`` (N per round).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from ecgcad.config import load_settings  # noqa: E402
from ecgcad.context import AppContext  # noqa: E402
from ecgcad.db.migrate import upgrade  # noqa: E402
from ecgcad.integration.transport.mllp import MllpDecoder, frame  # noqa: E402
from ecgcad.listeners.dicom_scp import DicomScp, supported_contexts  # noqa: E402
from ecgcad.listeners.hl7_server import Hl7Server  # noqa: E402

ECG_FILE = str(get_testdata_file("waveform_ecg.dcm"))


def _ctx(root: Path) -> AppContext:
    settings = load_settings(
        None,
        data_dir=str(root),
        dicom={"port": 0},
        hl7={"port": 0},
        queue={"min_free_disk_mb": 0, "max_depth": 10_000_000},
    )
    root.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    return AppContext.from_settings(settings)


def _write_copies(folder: Path, n: int) -> list[str]:
    template = pydicom.dcmread(ECG_FILE)
    paths = []
    for i in range(n):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"ecg{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(str(path))
    return paths


def _storescu(host: str, port: int, files: list[str]) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(
        ["storescu", "-aec", "ECGCAD", "-xs", host, str(port), *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-2000:]}")
    return elapsed


def _bare_scp() -> tuple[object, tuple[str, int]]:
    """A pynetdicom SCP that decodes the waveform and answers 0x0000; nothing is stored."""
    from pynetdicom import AE, evt

    def on_store(event: object) -> int:
        ds = event.dataset  # type: ignore[attr-defined]
        for i in range(len(ds.WaveformSequence)):
            ds.waveform_array(i)
        return 0

    ae = AE(ae_title="ECGCAD")
    for cx in supported_contexts():
        ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return server, server.server_address[:2]


def bench_dicom(n: int, tmp: Path, rounds: int = 3) -> tuple[float, float]:
    """C-STORE/s into ours and into the bare SCP, both running, in alternating rounds (median of each):
    drift of a shared machine hits both sides alike."""
    folder = tmp / "files"
    folder.mkdir()
    files = _write_copies(folder, n * rounds + 5)
    warm = files[:5]
    server, bare_address = _bare_scp()
    ctx = _ctx(tmp / "svc-dicom")
    scp = DicomScp(ctx)
    scp.start()
    ours_rates: list[float] = []
    bare_rates: list[float] = []
    try:
        _storescu(*bare_address, warm)
        _storescu(*scp.address, warm)
        for r in range(rounds):
            batch = files[5 + r * n : 5 + (r + 1) * n]
            bare_rates.append(n / _storescu(*bare_address, batch))
            ours_rates.append(n / _storescu(*scp.address, batch))
    finally:
        server.shutdown()  # type: ignore[attr-defined]
        scp.stop()
        ctx.close()
    return statistics.median(ours_rates), statistics.median(bare_rates)


def _oru(i: int) -> bytes:
    return (
        f"MSH|^~\\&|CART|WARD|ECGCAD|HOSP|20240101120000||ORU^R01^ORU_R01|B{i:07d}|P|2.5.1\r"
        f"PID|1||PAT{i}^^^HOSP^MR||DOE^JOHN||19600101|M\r"
        f"ORC|RE|PL{i}|FI{i}\rOBR|1|PL{i}|FI{i}|93000^ECG^CPT|||20240101115500\r"
        f"OBX|1|ST|TEXT||resting ECG||||||F\r"
    ).encode()


async def _stream(address: tuple[str, int], messages: list[bytes], window: int = 1) -> float:
    """Send ``messages`` on one connection with at most ``window`` unacknowledged (1 = lock-step)."""
    reader, writer = await asyncio.open_connection(*address)
    decoder = MllpDecoder()
    pending: list[bytes] = []
    t0 = time.perf_counter()
    sent = acked = 0
    while acked < len(messages):
        while sent < len(messages) and sent - acked < window:
            writer.write(frame(messages[sent]))
            sent += 1
        await writer.drain()
        while not pending:
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                raise ConnectionError("server closed")
            pending += decoder.feed(data)
        while pending:
            ack = pending.pop(0)
            acked += 1
            if b"MSA|AA|" not in ack and b"MSA|" in ack:
                raise RuntimeError(f"not accepted: {ack[:200]!r}")
    elapsed = time.perf_counter() - t0
    writer.close()
    await writer.wait_closed()
    return elapsed


async def _stream_python_hl7(address: tuple[str, int], messages: list[bytes], window: int = 1) -> float:
    """Send ``messages`` stop-and-wait with python-hl7's asyncio MLLP client (it parses every ACK)."""
    import hl7.mllp

    assert window == 1, "python-hl7's client reads one answer per message"
    texts = [m.decode() for m in messages]
    reader, writer = await hl7.mllp.open_hl7_connection(*address)
    t0 = time.perf_counter()
    for text in texts:
        writer.writemessage(text)
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), 30)
        if str(ack.segment("MSA")[1]) != "AA":
            raise RuntimeError(f"not accepted: {str(ack)[:200]!r}")
    elapsed = time.perf_counter() - t0
    writer.close()
    await writer.wait_closed()
    return elapsed


def _echo_server() -> tuple[threading.Thread, tuple[str, int], asyncio.AbstractEventLoop]:
    import hl7.mllp

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def handle(hl7_reader: object, hl7_writer: object) -> None:
        try:
            while not hl7_writer.is_closing():  # type: ignore[attr-defined]
                message = await hl7_reader.readmessage()  # type: ignore[attr-defined]
                hl7_writer.writemessage(message.create_ack())  # type: ignore[attr-defined]
                await hl7_writer.drain()  # type: ignore[attr-defined]
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            hl7_writer.close()  # type: ignore[attr-defined]

    def run() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0))
        holder["address"] = server.sockets[0].getsockname()[:2]
        holder["server"] = server
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    return thread, holder["address"], loop  # type: ignore[return-value]


def bench_hl7(
    n: int, tmp: Path, window: int = 1, rounds: int = 3, client: str = "minimal"
) -> tuple[float, float]:
    """Messages/s into ours and into the echo server, both running, in alternating rounds (median of each).

    ``client``: ``"minimal"`` (ours, any ``window``) or ``"python-hl7"`` (stop-and-wait).
    """
    stream = _stream_python_hl7 if client == "python-hl7" else _stream
    tag = b"W%d%s" % (window, client[:1].upper().encode())
    messages = [
        _oru(i).replace(b"|B", b"|" + tag, 1).replace(b"PAT", tag + b"PAT") for i in range(n * rounds + 50)
    ]
    thread, address, loop = _echo_server()
    ctx = _ctx(tmp / f"svc-hl7-{window}-{client}")
    server = Hl7Server(ctx)
    server.start()
    ours_rates: list[float] = []
    echo_rates: list[float] = []
    try:
        asyncio.run(stream(address, messages[:50], window))
        asyncio.run(stream(server.address, messages[:50], window))
        for r in range(rounds):
            batch = messages[50 + r * n : 50 + (r + 1) * n]
            echo_rates.append(n / asyncio.run(stream(address, batch, window)))
            ours_rates.append(n / asyncio.run(stream(server.address, batch, window)))
    finally:
        server.stop()
        ctx.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    return statistics.median(ours_rates), statistics.median(echo_rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom", type=int, default=200, help="C-STOREs per run")
    parser.add_argument("--hl7", type=int, default=1000, help="ORU messages per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per benchmark (median)")
    parser.add_argument("--quick", action="store_true", help="smaller runs (make bench)")
    args = parser.parse_args()
    if args.quick:
        args.dicom, args.hl7 = min(args.dicom, 80), min(args.hl7, 300)
    import logging

    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        rows: list[tuple[str, float, float, str, float | None]] = []
        if args.dicom and shutil.which("storescu"):
            ours, bare = bench_dicom(args.dicom, tmp, args.rounds)
            rows.append(
                ("DICOM C-STORE/s (storescu, 1 assoc)", ours, bare, "bare pynetdicom decode-only", 1.0)
            )
        ours, echo = bench_hl7(args.hl7, tmp, rounds=args.rounds, client="python-hl7")
        rows.append(("HL7 ORU msg/s (1 conn, python-hl7 client)", ours, echo, "python-hl7 asyncio echo", 0.6))
        ours, echo = bench_hl7(args.hl7, tmp, rounds=args.rounds)
        rows.append(("HL7 ORU msg/s (1 conn, minimal client)", ours, echo, "python-hl7 asyncio echo", None))
        ours, echo = bench_hl7(args.hl7, tmp, window=32, rounds=args.rounds)
        rows.append(("HL7 ORU msg/s (1 conn, 32 in flight)", ours, echo, "python-hl7 asyncio echo", 0.6))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'benchmark':42} {'ecgcad':>10} {'baseline':>10} {'ratio':>7} {'target':>7}  baseline")
    out = []
    for name, ours, base, label, target in rows:
        ratio = ours / base
        if target is None:
            print(f"{name:42} {ours:10.1f} {base:10.1f} {ratio:6.2f}x {'-':>7}  {label}")
        else:
            verdict = "ok" if ratio >= target else "BELOW"
            print(f"{name:42} {ours:10.1f} {base:10.1f} {ratio:6.2f}x {target:6.1f}x  {label} [{verdict}]")
        out.append(
            {
                "benchmark": name,
                "ours": ours,
                "baseline": base,
                "baseline_name": label,
                "ratio": ratio,
                "target": target,
            }
        )
    import json
    import platform

    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "ingest.json").write_text(
        json.dumps(
            {
                "machine": platform.node(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "rows": out,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
