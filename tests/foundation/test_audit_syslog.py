"""Audit events reach an ATNA repository as RFC 5424 syslog over TLS, in order, and none is skipped when the
repository was down for a while."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from ecgcad.config import load_settings
from ecgcad.context import AppContext
from ecgcad.db import audit
from ecgcad.db.audit_syslog import AuditSyslogForwarder
from ecgcad.db.migrate import upgrade
from tests.peers import free_port, require


def _cert(tmp: Path) -> tuple[Path, Path]:
    require("openssl")
    key, cert = tmp / "repo.key", tmp / "repo.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


class Repository:
    """A TLS syslog receiver that splits octet-counted frames."""

    def __init__(self, port: int, key: Path, cert: Path) -> None:
        self.frames: list[bytes] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.context = context
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            raw.settimeout(5)
            with self.context.wrap_socket(raw, server_side=True) as conn:
                buf = b""
                while True:
                    try:
                        chunk = conn.recv(65536)
                    except (ssl.SSLError, OSError):
                        break
                    if not chunk:
                        break
                    buf += chunk
                while buf:
                    length, _, rest = buf.partition(b" ")
                    n = int(length)
                    self.frames.append(rest[:n])
                    buf = rest[n:]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def ctx(tmp_path: Path) -> AppContext:
    key, cert = _cert(tmp_path)
    port = free_port()
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "var"),
        audit_syslog={"enabled": True, "port": port, "ca_certificates": str(cert)},
    )
    upgrade(settings)
    context = AppContext.from_settings(settings)
    context.repo_files = (key, cert)  # type: ignore[attr-defined]
    return context


def test_events_are_forwarded_in_order_as_rfc5424_with_a_dicom_audit_message(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        audit.record(
            s,
            "dicom.received",
            ae_title="CART1",
            address="10.1.2.3",
            patient_id="MRN-9",
            issuer_of_patient_id="HOSP",
            study_instance_uid="1.2.3",
        )
        audit.record(s, "audit.read", user="alice", role="admin", query="patient_id=MRN-9")
    forwarder = AuditSyslogForwarder(ctx)
    with pytest.raises(OSError):
        forwarder.forward_once()  # repository down: nothing is marked forwarded
    repo = Repository(ctx.settings.audit_syslog.port, *ctx.repo_files)  # type: ignore[attr-defined]
    try:
        assert forwarder.forward_once() == 2
        assert forwarder.forward_once() == 0, "the marker moved: nothing is sent twice"
        with ctx.db.session() as s:
            audit.record(s, "token.created", user="admin")
        assert forwarder.forward_once() == 1
        import time

        deadline = time.monotonic() + 10
        while len(repo.frames) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        repo.stop()
    assert len(repo.frames) == 3
    first = repo.frames[0].decode()
    assert re.match(r"<85>1 \d{4}-\d\d-\d\dT[\d:.]+Z \S+ ecgcad - IHE\+RFC-3881 - ", first)
    assert 'csd-code="110104"' in first and 'UserID="CART1"' in first and "MRN-9^^^HOSP" in first
    assert 'csd-code="110101"' in repo.frames[1].decode() and 'UserID="alice"' in repo.frames[1].decode()
    assert "token.created" in repo.frames[2].decode()


def test_a_checkpoint_is_forwarded_after_the_events_it_covers(ctx: AppContext) -> None:
    from ecgcad.db.audit_checkpoint import Checkpoint, take_checkpoint

    with ctx.db.session() as s:
        audit.record(s, "application.start")
        audit.record(s, "token.created", user="admin")
    checkpoint = take_checkpoint(ctx.db, ctx.settings.audit_checkpoint_file)
    forwarder = AuditSyslogForwarder(ctx)
    forwarder.offer_checkpoint(checkpoint)
    repo = Repository(ctx.settings.audit_syslog.port, *ctx.repo_files)  # type: ignore[attr-defined]
    try:
        assert not forwarder.send_checkpoint(), "its events are not forwarded yet"
        assert forwarder.forward_once() == 2
        assert forwarder.send_checkpoint()
        assert not forwarder.send_checkpoint(), "sent once"
        import time

        deadline = time.monotonic() + 10
        while len(repo.frames) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        repo.stop()
    assert len(repo.frames) == 3
    message = repo.frames[2].decode()
    assert re.match(r"<85>1 \S+ \S+ ecgcad - ECGCAD-AUDIT-CHECKPOINT - ", message)
    sent = Checkpoint.from_json(message.split("\ufeff", 1)[1])
    assert sent == checkpoint and sent.verify_signature(ctx.db.audit_key)
