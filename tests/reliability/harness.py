"""Shared pieces of the reliability tests: `ecgcad serve` as a restartable subprocess, unique test inputs,
senders that resend what was not acknowledged, counting sinks and a scripted (failing) MLLP sink."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from ecgcad.integration.transport.mllp import MllpDecoder, frame
from tests.peers import free_port, require, wait_for, wait_port

ROOT = Path(__file__).resolve().parents[2]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def figures(title: str, **values: Any) -> None:
    """Print the figures a reliability test measured (visible with ``-s`` or in the ``-rA`` summary)."""
    print(f"\n[{title}] " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


# --------------------------------------------------------------------------------------------- inputs
def _template() -> pydicom.Dataset:
    from ecgcad.testing.ecg_writers import real_dicom_ecg_bytes

    return pydicom.dcmread(io.BytesIO(real_dicom_ecg_bytes()))


def unique_ecg(template: pydicom.Dataset, n: int, tag: str, **identifiers: str) -> pydicom.Dataset:
    """A copy of the real ECG with new Study/Series/SOP Instance UIDs and a patient ID of its own."""
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = f"{tag}{n:05d}"
    for keyword, value in identifiers.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_ecg_files(folder: Path, n: int, tag: str = "D") -> list[Path]:
    """``n`` DICOM ECG files with unique UIDs (what ``storescu`` sends)."""
    folder.mkdir(parents=True, exist_ok=True)
    template = _template()
    paths = []
    for i in range(n):
        path = folder / f"{tag}{i:05d}.dcm"
        path.write_bytes(dicom_bytes(unique_ecg(template, i, tag)))
        paths.append(path)
    return paths


def oru_messages(n: int, tag: str = "H", **identifiers: str) -> list[tuple[str, bytes]]:
    """``n`` ORU^R01 messages (MSH-10 ``<tag>nnnnn``), each carrying a different DICOM ECG in an ED OBX."""
    from ecgcad.testing.ecg_writers import write_hl7_oru_ed

    template = _template()
    out = []
    for i in range(n):
        cid = f"{tag}{i:05d}"
        ds = unique_ecg(template, i, tag, **{k: v for k, v in identifiers.items() if k[0].isupper()})
        msg = write_hl7_oru_ed(
            dicom_bytes(ds),
            "DICOM",
            control_id=cid,
            patient_id=str(ds.PatientID),
            **{k: v for k, v in identifiers.items() if not k[0].isupper()},
        )
        out.append((cid, msg))
    return out


# --------------------------------------------------------------------------------------------- service
@dataclass
class Destination:
    """One `[[destinations]]` entry."""

    name: str
    kind: str
    port: int
    send: list[str] = field(default_factory=list)
    ae_title: str = ""
    timeout_s: float = 5.0
    max_attempts: int = 50


class Serve:
    """`ecgcad serve` as a subprocess on fixed ports (kept across restarts), logging to one file.

    Parameters
    ----------
    tmp:
        Folder for the config, data folder and log.
    destinations:
        Outbound destinations.
    extra:
        More TOML appended to the config (sections after the defaults).
    """

    def __init__(
        self,
        tmp: Path,
        destinations: list[Destination],
        *,
        extra: str = "",
        queue: str = "",
        dicom: str = "",
        hl7: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "var"
        self.dicom_port, self.hl7_port, self.api_port = free_port(), free_port(), free_port()
        self.config = tmp / "ecgcad.toml"
        dests = "".join(
            f'\n[[destinations]]\nname = "{d.name}"\nkind = "{d.kind}"\nhost = "127.0.0.1"\nport = {d.port}\n'
            f"timeout_s = {d.timeout_s}\nmax_attempts = {d.max_attempts}\n"
            + (f'ae_title = "{d.ae_title}"\n' if d.ae_title else "")
            + (f"send = {json.dumps(d.send)}\n" if d.send else "")
            for d in destinations
        )
        self.config.write_text(
            f'data_dir = "{self.data_dir}"\n{extra}\n'
            f"[dicom]\nport = {self.dicom_port}\nnetwork_timeout_s = 10\n{dicom}\n"
            f"[hl7]\nport = {self.hl7_port}\n{hl7}\n"
            f"[api]\nport = {self.api_port}\n"
            f"[model]\nmax_wait_ms = 5\n"
            f"[queue]\nmin_free_disk_mb = 0\nbackoff_base_s = 0.2\nbackoff_max_s = 2\nlease_s = 8\n{queue}\n"
            + dests
        )
        self.log_path = tmp / "serve.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.starts = 0

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ecgcad", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        self.starts += 1
        wait_for(self._ready, timeout, "ecgcad serve to be ready", interval=0.2)

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("ecgcad serve exited:\n" + self.log_text()[-4000:])
        try:
            return bool(self.get_json("/readyz")["ready"])
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL (no shutdown code runs)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.kills += 1

    def stop(self) -> int | None:
        """SIGTERM and wait (bounded); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- HTTP --------------------------------------------------------------------------------------------
    def get(self, path: str, token: str | None = None, timeout: float = 10) -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as exc:
            return bytes(exc.read())

    def get_json(self, path: str, token: str | None = None) -> Any:
        return json.loads(self.get(path, token))

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.get("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def token(self, role: str = "admin") -> str:
        """A new API token (``ecgcad token create``) for ``role``."""
        out = subprocess.run(
            [sys.executable, "-m", "ecgcad", "token", "create", f"rel-{role}-{time.monotonic_ns()}",
             "--config", str(self.config), "--role", role],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=self.env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1].strip()

    # -- database counts (after stop) --------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        """Source objects, ECGs, results per (ECG, model version), deliveries by state, from the database."""
        from sqlalchemy import func, select

        from ecgcad.config import load_settings
        from ecgcad.db.models import Delivery, EcgRecord, Result, SourceObject
        from ecgcad.db.session import Database

        db = Database.from_settings(load_settings(self.config))
        try:
            with db.session() as s:
                by_uid = Counter(
                    u
                    for (u,) in s.execute(
                        select(SourceObject.sop_instance_uid).where(SourceObject.kind == "dicom")
                    )
                )
                by_cid = Counter(
                    c
                    for (c,) in s.execute(
                        select(SourceObject.message_control_id).where(SourceObject.kind == "hl7")
                    )
                )
                ecgs = s.execute(select(func.count()).select_from(EcgRecord)).scalar_one()
                per_result = Counter(
                    (e, m)
                    for e, m in s.execute(
                        select(Result.ecg_id, Result.model_version_id).where(Result.shadow.is_(False))
                    )
                )
                scored = s.execute(select(func.count(func.distinct(Result.ecg_id)))).scalar_one()
                deliveries = Counter(
                    f"{d}:{st}" for d, st in s.execute(select(Delivery.destination, Delivery.state))
                )
                max_attempts = s.execute(select(func.max(Delivery.attempts))).scalar()
        finally:
            db.dispose()
        return {
            "by_uid": by_uid,
            "by_cid": by_cid,
            "ecgs": ecgs,
            "per_result": per_result,
            "scored": scored,
            "deliveries": deliveries,
            "max_delivery_attempts": max_attempts,
        }


# --------------------------------------------------------------------------------------------- senders
class StorescuSender(threading.Thread):
    """Sends files with dcmtk ``storescu`` (one association per run) until every file is acknowledged.

    A run that dies with the server leaves some files unacknowledged; the next run resends only those, so
    a file stored but not acknowledged before a crash is sent again (and must be stored once).
    """

    def __init__(self, port: int, files: list[Path], deadline_s: float = 600) -> None:
        super().__init__(daemon=True)
        self.port, self.files = port, files
        self.acked: set[str] = set()
        self.sent = 0
        self.runs = 0
        self.resent = 0
        self.deadline = time.monotonic() + deadline_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        require("storescu")
        attempted: set[str] = set()
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            todo = [f for f in self.files if f.name not in self.acked]
            if not todo:
                return
            self.runs += 1
            # storescu answers 0xA700 and friends with a warning and goes on; it stops on a dead peer.
            try:
                out = subprocess.run(
                    ["storescu", "-v", "-aec", "ECGCAD", "-aet", "CART1", "-to", "10", "-ta", "10", "-td", "10",
                     "127.0.0.1", str(self.port), *map(str, todo[:200])],
                    capture_output=True, text=True, timeout=120, env=DCMTK_ENV,
                )  # fmt: skip
                text = out.stdout + out.stderr
            except subprocess.TimeoutExpired as exc:
                text = (
                    (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else str(exc.stdout or "")
                )
            current: str | None = None
            for line in text.splitlines():
                m = re.search(r"Sending file: (.+)$", line)
                if m:
                    current = Path(m.group(1).strip()).name
                    self.sent += 1
                    if current in attempted:
                        self.resent += 1
                    attempted.add(current)
                elif "Received Store Response (Success)" in line and current:
                    self.acked.add(current)
                    current = None
            if len(self.acked) < len(self.files):
                self.stop_event.wait(0.3)


class MllpResender(threading.Thread):
    """Sends HL7 messages over MLLP one at a time, reconnecting and resending until each gets ``AA``."""

    def __init__(
        self, port: int, messages: list[tuple[str, bytes]], deadline_s: float = 600, ssl_context: Any = None
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.messages, self.ssl_context = port, messages, ssl_context
        self.acked: set[str] = set()
        self.sent = 0
        self.resent = 0
        self.nacks: Counter[str] = Counter()
        self.deadline = time.monotonic() + deadline_s
        self.stop_event = threading.Event()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_hostname="localhost")
        return sock

    def run(self) -> None:
        i = 0
        sock: socket.socket | None = None
        decoder = MllpDecoder()
        tried: set[str] = set()
        while i < len(self.messages) and not self.stop_event.is_set() and time.monotonic() < self.deadline:
            cid, msg = self.messages[i]
            try:
                if sock is None:
                    sock = self._connect()
                    decoder = MllpDecoder()
                sock.sendall(frame(msg))
                self.sent += 1
                if cid in tried:
                    self.resent += 1
                tried.add(cid)
                acks: list[bytes] = []
                while not acks:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("closed")
                    acks = decoder.feed(data)
                code = _msa(acks[0])
                if code in ("AA", "CA"):
                    self.acked.add(cid)
                    i += 1
                else:
                    self.nacks[code] += 1
                    self.stop_event.wait(0.2)
            except (OSError, ConnectionError):
                if sock is not None:
                    sock.close()
                sock = None
                self.stop_event.wait(0.2)
        if sock is not None:
            sock.close()


def _msa(ack: bytes) -> str:
    for seg in ack.split(b"\r"):
        if seg.startswith(b"MSA|"):
            return seg.split(b"|")[1].decode("latin-1")
    return "?"


# --------------------------------------------------------------------------------------------- sinks
class UniqueStoreScp:
    """dcmtk ``storescp`` writing every received object to its own file (``+uf``), so resends are counted."""

    def __init__(
        self, folder: Path, ae_title: str = "PACS", port: int | None = None, args: tuple[str, ...] = ()
    ) -> None:
        require("storescp")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(folder), "+uf", "--accept-all", *args, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def sop_uids(self, sop_class: str | None = SR_CLASS) -> Counter[str]:
        """Received SOP Instance UIDs (of ``sop_class``) with the number of times each arrived."""
        out: Counter[str] = Counter()
        for p in sorted(self.folder.iterdir()):
            if not p.is_file():
                continue
            try:
                ds = pydicom.dcmread(
                    p, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
                )
            except Exception:  # noqa: BLE001 - a file still being written
                continue
            if sop_class is None or ds.get("SOPClassUID") == sop_class:
                out[str(ds.SOPInstanceUID)] += 1
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def oru_result_key(msg: bytes) -> str:
    """The result an ORU reports: its MSH-10 without the attempt suffix (``E<result>V<version>``)."""
    msh = msg.split(b"\r", 1)[0].split(b"|")
    cid = msh[9].decode("latin-1") if len(msh) > 9 else ""
    return re.sub(r"A\d+$", "", cid)


class ScriptedMllpSink:
    """An MLLP destination whose behaviour can be switched while it runs.

    Modes: ``refuse`` (nothing listens: connection refused), ``ae`` (answer ``AE``), ``timeout`` (read the
    message, never answer), ``aa`` (answer ``AA`` and record the message), ``aa_twice`` (answer ``AA``
    twice: a duplicate acknowledgement).
    """

    def __init__(self, mode: str = "aa") -> None:
        self.port = free_port()
        self.messages: list[bytes] = []
        self.attempts: Counter[str] = Counter()
        self.attempt_times: list[tuple[float, str]] = []
        self._mode = "refuse"
        self._lsock: socket.socket | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self._mode = mode
            if mode == "refuse" and self._lsock is not None:
                self._lsock.close()
                self._lsock = None
            elif mode != "refuse" and self._lsock is None:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", self.port))
                s.listen(64)
                self._lsock = s
                t = threading.Thread(target=self._accept, args=(s,), daemon=True)
                t.start()
                self._threads.append(t)

    def _accept(self, lsock: socket.socket) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = MllpDecoder()
        conn.settimeout(30)
        try:
            while not self._closing.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                for msg in decoder.feed(data):
                    key = oru_result_key(msg)
                    mode = self._mode
                    self.attempts[mode] += 1
                    self.attempt_times.append((time.monotonic(), key))
                    if mode == "timeout":
                        continue
                    code = b"AE" if mode == "ae" else b"AA"
                    if code == b"AA":
                        self.messages.append(msg)
                    cid = msg.split(b"\r", 1)[0].split(b"|")[9]
                    ack = (
                        b"MSH|^~\\&|SINK||ECGCAD||20260101000000||ACK^R01^ACK|A"
                        + cid
                        + b"|P|2.5.1\rMSA|"
                        + code
                        + b"|"
                        + cid
                        + b"\r"
                    )
                    conn.sendall(frame(ack) * (2 if mode == "aa_twice" else 1))
        except OSError:
            return
        finally:
            conn.close()

    def stop(self) -> None:
        self._closing.set()
        self.set_mode("refuse")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (kB, from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
