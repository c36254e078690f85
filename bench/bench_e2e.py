"""End to end: C-STORE acknowledgement → SR stored at the PACS and ORU acknowledged by the EHR.

Usage::

    python bench/bench_e2e.py [--quick] [--rate 10] [--seconds 20] [--burst 80] [--optimize auto] [--out DIR]

Starts ``ecgcad serve`` as a subprocess (embedded SQLite, the configured model — the demonstration model by
default), dcmtk ``storescp`` as the PACS and an MLLP sink as the EHR (the peers of ``tests/e2e``). ECGs
(pydicom's real 12-lead ECG, each with its own Patient ID and UIDs) are sent over one pynetdicom
association, so the acknowledgement time of each C-STORE is known exactly.

Two phases:

1. steady load at ``--rate`` ECG/s for ``--seconds``: per-ECG latency = max(SR file written, ORU acked) −
   C-STORE acknowledged; p50 and p95 against the issue's target (p95 < 1 s at 10 ECG/s);
2. saturation: ``--burst`` ECGs sent as fast as the SCP takes them; sustained ECG/s = completed ECGs /
   (last completion − first acknowledgement), against the target (≥ 40 ECG/s).

Writes ``<out>/e2e.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import _common
import pydicom
import pydicom.data
from pydicom.uid import generate_uid

from tests.peers import MllpSink, StoreScp, free_port, wait_for

REAL_ECG = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))  # type: ignore[arg-type]
TARGET_P95_S = 1.0
TARGET_SUSTAINED = 40.0


class TimedList(list):  # type: ignore[type-arg]
    """A list that remembers when each item was appended (the MLLP sink's record of messages)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)


class Watcher(threading.Thread):
    """Polls the PACS folder and the sink; first time each Patient ID's SR and ORU were seen."""

    def __init__(self, pacs: StoreScp, sink: MllpSink) -> None:
        super().__init__(daemon=True)
        self.pacs, self.sink = pacs, sink
        self.sr: dict[str, float] = {}
        self.oru: dict[str, float] = {}
        self._seen: set[Path] = set()
        self._n_msgs = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll()
            time.sleep(0.01)

    def poll(self) -> None:
        now = time.monotonic()
        for path in self.pacs.files():
            if path in self._seen:
                continue
            try:
                ds = pydicom.dcmread(
                    path, stop_before_pixels=True, specific_tags=["PatientID", "SOPClassUID"]
                )
            except Exception:  # noqa: BLE001 - storescp may still be writing it; retry next poll
                continue
            self._seen.add(path)
            if str(ds.get("SOPClassUID", "")).startswith("1.2.840.10008.5.1.4.1.1.88"):
                self.sr.setdefault(str(ds.PatientID), now)
        msgs: TimedList = self.sink.messages  # type: ignore[assignment]
        while self._n_msgs < len(msgs):
            msg, t = msgs[self._n_msgs], msgs.times[self._n_msgs]
            self._n_msgs += 1
            for seg in msg.split(b"\r"):
                if seg.startswith(b"PID|"):
                    pid = seg.split(b"|")[3].split(b"^")[0].decode()
                    self.oru.setdefault(pid, t)


def _dataset(i: int, tag: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(REAL_ECG)
    ds.PatientID = f"{tag}{i:05d}"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = f"A{tag}{i:05d}"
    return ds


def send(port: int, datasets: list[pydicom.Dataset], rate: float | None) -> dict[str, float]:
    """C-STORE each dataset (at ``rate`` per second, or as fast as acknowledged); ack time per Patient ID."""
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECGCAD")
    if not assoc.is_established:
        raise SystemExit("could not associate with ecgcad's SCP")
    acks: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        for i, ds in enumerate(datasets):
            if rate:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            status = assoc.send_c_store(ds)
            if status and status.Status == 0:
                acks[str(ds.PatientID)] = time.monotonic()
    finally:
        assoc.release()
    return acks


def start_service(
    tmp: Path, pacs: StoreScp, sink: MllpSink, optimize: str
) -> tuple[subprocess.Popen[bytes], int]:
    dicom_port, hl7_port, api_port = free_port(), free_port(), free_port()
    config = tmp / "ecgcad.toml"
    config.write_text(
        f"""
data_dir = "{tmp / "var"}"
[dicom]
port = {dicom_port}
[hl7]
port = {hl7_port}
[api]
port = {api_port}
[model]
max_wait_ms = 5
optimize = "{optimize}"
[[destinations]]
name = "pacs"
kind = "dicom"
host = "127.0.0.1"
port = {pacs.port}
ae_title = "PACS"
send = ["sr"]
[[destinations]]
name = "ehr"
kind = "hl7"
host = "127.0.0.1"
port = {sink.port}
"""
    )
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecgcad", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=_common.ROOT,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit("ecgcad serve exited:\n" + (tmp / "serve.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2) as r:
                body = json.loads(r.read())
            # steady state is measured: wait for the model too (loaded in the background at start)
            return body["ready"] is True and body["checks"].get("model_loaded") is True
        except OSError:
            return False

    wait_for(ready, 300, "ecgcad serve to be ready")
    return proc, dicom_port


def completion(watcher: Watcher, acks: dict[str, float], timeout: float) -> dict[str, float]:
    """Wait until every acknowledged ECG has its SR and ORU (or ``timeout``); done time per Patient ID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p in watcher.sr and p in watcher.oru for p in acks):
            break
        time.sleep(0.05)
    return {p: max(watcher.sr[p], watcher.oru[p]) for p in acks if p in watcher.sr and p in watcher.oru}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 s of steady load and a burst of 40")
    parser.add_argument("--rate", type=float, default=10.0, help="offered load, ECG/s")
    parser.add_argument(
        "--seconds", type=float, default=None, help="steady phase length (default 20; quick 10)"
    )
    parser.add_argument("--burst", type=int, default=None, help="ECGs in the saturation phase (80; quick 40)")
    parser.add_argument("--optimize", default="auto", help="[model] optimize of the service")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seconds = args.seconds or (10.0 if args.quick else 20.0)
    burst = args.burst or (40 if args.quick else 80)
    n_steady = max(1, int(seconds * args.rate))

    steady_sets = [_dataset(i, "S") for i in range(n_steady)]
    burst_sets = [_dataset(i, "B") for i in range(burst)]
    with tempfile.TemporaryDirectory(prefix="ecgcad-bench-e2e-") as tmpdir:
        tmp = Path(tmpdir)
        pacs = StoreScp(tmp / "pacs")
        sink = MllpSink()
        sink.messages = TimedList()
        t_start = time.monotonic()
        proc, port = start_service(tmp, pacs, sink, args.optimize)
        startup_s = time.monotonic() - t_start
        watcher = Watcher(pacs, sink)
        watcher.start()
        try:
            acks = send(port, steady_sets, args.rate)
            done = completion(watcher, acks, 120)
            lat = sorted(done[p] - acks[p] for p in done)
            if os.environ.get("BENCH_E2E_TRACE"):
                print("latencies in send order:", [round(done[p] - acks[p], 3) for p in acks if p in done])
                print("sr-oru:", [round(watcher.sr.get(p, 0) - watcher.oru.get(p, 0), 3) for p in acks])
            b_acks = send(port, burst_sets, None)
            b_done = completion(watcher, b_acks, 300)
        finally:
            watcher.stop_event.set()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
            pacs.stop()
            sink.stop()
    sustained = (
        len(b_done) / (max(b_done.values()) - min(b_acks.values())) if b_done and b_acks else float("nan")
    )
    offered_burst = (
        len(b_acks) / (max(b_acks.values()) - min(b_acks.values())) if len(b_acks) > 1 else float("nan")
    )
    rows = [
        {"figure": "p50 latency s", "ours": _common.percentile(lat, 50), "target": None},
        {"figure": "p95 latency s", "ours": _common.percentile(lat, 95), "target": TARGET_P95_S},
        {"figure": "max latency s", "ours": lat[-1] if lat else float("nan"), "target": None},
        {"figure": "completed (steady)", "ours": float(len(done)), "target": float(n_steady)},
        {"figure": "sustained ECG/s", "ours": sustained, "target": TARGET_SUSTAINED},
        {"figure": "C-STORE ECG/s (burst)", "ours": offered_burst, "target": None},
        {"figure": "completed (burst)", "ours": float(len(b_done)), "target": float(burst)},
        {"figure": "service start s", "ours": startup_s, "target": None},
    ]
    _common.print_table(
        f"end to end: ack → SR stored + ORU acked, {args.rate:g} ECG/s offered for {seconds:g} s, "
        f"burst of {burst} (optimize={args.optimize})",
        [("figure", "figure", 22), ("ours", "ours", 8), ("target", "target", 8)],
        rows,
    )
    path = _common.write_results(
        "e2e",
        {
            "quick": args.quick,
            "rate": args.rate,
            "seconds": seconds,
            "burst": burst,
            "optimize": args.optimize,
            "rows": rows,
            "latencies_s": lat,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
