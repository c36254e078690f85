"""Logging: one format for the whole service, carrying identifiers and never PHI.

Modules log with ``logging.getLogger(__name__)`` and pass identifiers (job id, hashed SOP Instance UID,
MSH-10, model version) in the message. :func:`uid_hash` gives the short hash used for UIDs. Patient names,
IDs and birth dates are never logged; they belong in the audit trail.
"""

from __future__ import annotations

import hashlib
import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


def uid_hash(uid: str | bytes | None) -> str:
    """A short, stable hash of a UID or control id for logs (``"-"`` for ``None``)."""
    if uid is None:
        return "-"
    if isinstance(uid, str):
        uid = uid.encode("utf-8", "replace")
    return hashlib.sha256(uid).hexdigest()[:12]


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (not the stream seen at set-up),
    so that a replaced or closed stderr (test runners, daemonisation) never breaks logging."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # type: ignore[no-untyped-def]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # type: ignore[no-untyped-def]
        pass


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger once (stderr, :data:`LOG_FORMAT`)."""
    root = logging.getLogger()
    if getattr(configure_logging, "_done", False):
        root.setLevel(level.upper())
        return
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party libraries log dataset contents at DEBUG/INFO (PHI): keep them quiet.
    for noisy in (
        "pynetdicom",
        "pydicom",
        "hl7apy",
        "uvicorn.access",
        "apscheduler",
        "procrastinate",
        "alembic",
        "highdicom",
        "matplotlib",
        "PIL",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    configure_logging._done = True  # type: ignore[attr-defined]
