"""Forwarding of the audit trail to an ATNA audit repository: RFC 5424 syslog messages over TLS (RFC 5425).

Each audit event becomes one syslog message with MSGID ``IHE+RFC-3881`` whose body is a DICOM audit message
(PS3.15 A.5) in XML. Frames use octet counting (``LEN SP MSG``). Events are read in id order after a
marker kept in ``kv_state`` (``audit.syslog``); the marker moves only after the events were written and the
connection closed cleanly, so a repository that is down gets them later, in order. (Syslog has no
application-level acknowledgement: what the repository does after TCP/TLS accepted the bytes is its own.)

The audit chain's signed checkpoints (:mod:`ecgcad.db.audit_checkpoint`) go the same way, each as one
message with MSGID ``ECGCAD-AUDIT-CHECKPOINT`` whose body is the checkpoint's JSON, after the events it
covers: the repository then holds a copy of the chain's length and head that no one on this host can change.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from sqlalchemy import select

from ecgcad.db.models import AuditEvent, KvState, utcnow

if TYPE_CHECKING:
    from ecgcad.context import AppContext
    from ecgcad.db.audit_checkpoint import Checkpoint

logger = logging.getLogger(__name__)

MARKER_KEY = "audit.syslog"
MSGID = "IHE+RFC-3881"
CHECKPOINT_MSGID = "ECGCAD-AUDIT-CHECKPOINT"
#: Facility 10 (security/authorization), severity 5 (notice) — the usual choice for ATNA.
PRIORITY = 10 * 8 + 5

_EVENT_NAMES = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110104": "DICOM Instances Transferred",
    "110105": "DICOM Study Deleted",
    "110106": "Export",
    "110107": "Import",
    "110110": "Patient Record",
    "110112": "Query",
    "110113": "Security Alert",
    "110114": "User Authentication",
}


def audit_message_xml(event: AuditEvent, source_id: str) -> str:
    """The DICOM audit message (PS3.15 A.5.1) of one event."""
    when = event.occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    parts = [
        "<AuditMessage>",
        f"<EventIdentification EventActionCode={quoteattr(event.action)} EventDateTime={quoteattr(when)}"
        f" EventOutcomeIndicator={quoteattr(str(event.outcome))}>",
        f'<EventID csd-code={quoteattr(event.event_id)} codeSystemName="DCM"'
        f" originalText={quoteattr(_EVENT_NAMES.get(event.event_id, event.event_type))}/>",
        f'<EventTypeCode csd-code={quoteattr(event.event_type)} codeSystemName="99ECGCAD"'
        f" originalText={quoteattr(event.event_type)}/>",
        "</EventIdentification>",
    ]
    user = event.user or event.ae_title or source_id
    attrs = f'UserID={quoteattr(user)} UserIsRequestor="true"'
    if event.address:
        attrs += f' NetworkAccessPointID={quoteattr(event.address)} NetworkAccessPointTypeCode="2"'
    if event.role:
        attrs += f" AlternativeUserID={quoteattr(event.role)}"
    parts.append(f"<ActiveParticipant {attrs}/>")
    parts.append(f"<AuditSourceIdentification AuditSourceID={quoteattr(source_id)}/>")
    if event.patient_id:
        pid = event.patient_id + (f"^^^{event.issuer_of_patient_id}" if event.issuer_of_patient_id else "")
        parts.append(
            f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(pid)}"
            ' ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
            '<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/>'
            "</ParticipantObjectIdentification>"
        )
    if event.study_instance_uid:
        parts.append(
            f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(event.study_instance_uid)}"
            ' ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">'
            '<ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" originalText="Study Instance UID"/>'
            "</ParticipantObjectIdentification>"
        )
    if event.query:
        parts.append(
            f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(event.query[:512])}"
            ' ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="24">'
            '<ParticipantObjectIDTypeCode csd-code="110181" codeSystemName="DCM" originalText="SOP Class UID"/>'
            "</ParticipantObjectIdentification>"
        )
    parts.append("</AuditMessage>")
    return "".join(parts)


def syslog_frame(event: AuditEvent, *, app_name: str, hostname: str | None = None) -> bytes:
    """One RFC 5424 message with RFC 5425 octet-counting framing."""
    when = event.occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    host = (hostname or socket.gethostname() or "-")[:255]
    body = audit_message_xml(event, app_name)
    msg = f"<{PRIORITY}>1 {when} {host} {app_name[:48]} - {MSGID} - \ufeff{body}".encode()
    return str(len(msg)).encode() + b" " + msg


def checkpoint_frame(checkpoint: Checkpoint, *, app_name: str, hostname: str | None = None) -> bytes:
    """One RFC 5424 message carrying an audit checkpoint (its JSON), framed as :func:`syslog_frame`."""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    host = (hostname or socket.gethostname() or "-")[:255]
    body = checkpoint.to_json()
    msg = f"<{PRIORITY}>1 {when} {host} {app_name[:48]} - {CHECKPOINT_MSGID} - \ufeff{body}".encode()
    return str(len(msg)).encode() + b" " + msg


class AuditSyslogForwarder:
    """A start/stop component that forwards new audit events to the configured repository."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.audit_syslog
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.forwarded = 0
        self.last_error: str | None = None
        self._checkpoint: Any = None
        self._checkpoint_lock = threading.Lock()
        self.checkpoints_sent = 0

    @property
    def address(self) -> tuple[str, int]:
        """The repository."""
        return self.settings.host, self.settings.port

    @property
    def alive(self) -> bool:
        """True while forwarding."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Forward in a background thread."""
        self._thread = threading.Thread(target=self._run, name="ecgcad-audit-syslog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current batch."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _connect(self) -> socket.socket:
        s = self.settings
        sock = socket.create_connection((s.host, s.port), timeout=10)
        if not s.tls:
            return sock
        context = ssl.create_default_context(cafile=s.ca_certificates or None)
        if s.certificate:
            context.load_cert_chain(s.certificate, s.private_key or None)
        return context.wrap_socket(sock, server_hostname=s.host)

    def forward_once(self, limit: int = 500) -> int:
        """Send events after the marker (up to ``limit``); return how many were sent."""
        with self.ctx.db.session() as session:
            marker = session.get(KvState, MARKER_KEY)
            after = int(marker.value.get("last_id", 0)) if marker else 0
            events = (
                session.execute(
                    select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id).limit(limit)
                )
                .scalars()
                .all()
            )
            frames = [(e.id, syslog_frame(e, app_name=self.settings.app_name)) for e in events]
        if not frames:
            return 0
        with self._connect() as sock:
            for _, frame in frames:
                sock.sendall(frame)
        last = frames[-1][0]
        with self.ctx.db.session() as session:
            marker = session.get(KvState, MARKER_KEY)
            if marker is None:
                session.add(KvState(key=MARKER_KEY, value={"last_id": last}, updated_at=utcnow()))
            else:
                marker.value = {"last_id": last}
        self.forwarded += len(frames)
        return len(frames)

    def offer_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Send ``checkpoint`` (an ``audit_checkpoint.Checkpoint``) once the events it covers are sent.

        Only the newest offered checkpoint is kept: it covers every older one.
        """
        with self._checkpoint_lock:
            self._checkpoint = checkpoint

    def send_checkpoint(self) -> bool:
        """Send the offered checkpoint if every event it covers was forwarded; True when one was sent."""
        with self._checkpoint_lock:
            checkpoint = self._checkpoint
        if checkpoint is None:
            return False
        with self.ctx.db.read_session() as session:
            marker = session.get(KvState, MARKER_KEY)
            after = int(marker.value.get("last_id", 0)) if marker else 0
        if after < checkpoint.last_id:
            return False
        frame = checkpoint_frame(checkpoint, app_name=self.settings.app_name)
        with self._connect() as sock:
            sock.sendall(frame)
        with self._checkpoint_lock:
            if self._checkpoint is checkpoint:
                self._checkpoint = None
        self.checkpoints_sent += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while self.forward_once():
                    pass
                self.send_checkpoint()
                self.last_error = None
            except (OSError, ssl.SSLError) as exc:
                if self.last_error != str(exc):
                    logger.warning(
                        "audit repository %s:%s unreachable: %s", self.settings.host, self.settings.port, exc
                    )
                self.last_error = str(exc)
            except Exception:  # noqa: BLE001 - keep forwarding later
                logger.exception("audit forwarding failed")
            self._stop.wait(self.settings.interval_s)
