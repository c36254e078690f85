"""Outbound senders behind one :class:`Sender` protocol: the DICOM C-STORE SCU (:mod:`.dicom`) and the HL7 MLLP
client (:mod:`.mllp`), with what they share (:class:`SendOutcome`, kept-open connections).

A sender makes **one attempt** and reports what the peer said as a :class:`SendOutcome`; it does not
retry, sleep or touch the database (the delivery state machine in ``ecgcad.jobs`` does). Peer behaviour
is never raised: ``send`` returns an outcome. Callers that prefer exceptions call
:meth:`SendOutcome.raise_for_outcome`, which raises :class:`~ecgcad.errors.DeliveryError` (retry) or
:class:`~ecgcad.errors.PermanentDeliveryError` (do not resend).

Classification
--------------
DICOM (:class:`DicomStoreSender`):
    ``0x0000`` → delivered. Warning statuses (``0x0001``, ``0xB000``, ``0xB006``, ``0xB007``, ``0x0107``,
    ``0x0116``) are logged and **not** delivered unless ``accept_warnings=True`` (success only on
    ``0x0000``); they are not retryable (the same object would get the same warning).
    Failures: ``0xA7xx`` out of resources, ``0x0110`` processing failure, ``0x0213`` resource limitation,
    ``0xFE00`` cancelled and unknown codes → retryable; ``0xA9xx``, ``0xCxxx`` (cannot understand / data
    set does not match), ``0x0122`` SOP class not supported, ``0x0124`` not authorised, ``0x0117``
    invalid instance, other ``0x01xx``/``0x02xx`` → permanent. Connection refused, association
    rejected or aborted, no response (DIMSE timeout) → retryable. The peer accepting no presentation
    context for the SOP class → permanent (a configuration problem).
HL7 (:class:`MllpSender`):
    MSA-1 ``AA``/``CA`` → delivered; ``AE``/``CE`` → retryable; ``AR``/``CR`` → permanent; no reply
    within the timeout, connection refused/reset, an unparsable reply or an MSA-2 that does not echo
    MSH-10 → retryable.

Connections
-----------
With ``keep_open_s > 0`` (``[[destinations]] keep_open_s``, passed by the delivery pool) a sender keeps its
association or TCP connection open for the next :meth:`~Sender.send` and closes it once idle that long
(one reaper thread per process) or on ``close()``. A kept connection found dead is replaced, and the object
sent again, at most once within the same ``send``; the classification above does not change. A sender
serves one thread at a time (its lock serialises sends, ``close()`` and the idle check).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import socket
import threading
import time
from typing import Protocol, Self, runtime_checkable

from pydicom.dataset import Dataset

from ecgcad.errors import DeliveryError, PermanentDeliveryError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one delivery attempt achieved.

    Attributes
    ----------
    delivered:
        The peer confirmed (C-STORE ``0x0000``; MSA-1 ``AA``/``CA``).
    retryable:
        Not delivered, and a later attempt may succeed (meaningless when delivered).
    response:
        A short, PHI-free description of the peer's answer (``"status 0xA700"``, ``"MSA AE: ..."``,
        ``"connection refused"``), stored as the delivery's last response.
    status:
        The DIMSE status or the MSA-1 code, when the peer answered.
    """

    delivered: bool
    retryable: bool
    response: str
    status: int | str | None = None

    @classmethod
    def ok(cls, response: str, status: int | str | None = None) -> SendOutcome:
        """A delivered outcome."""
        return cls(True, False, response, status)

    @classmethod
    def retry(cls, response: str, status: int | str | None = None) -> SendOutcome:
        """A failed attempt worth retrying."""
        return cls(False, True, response, status)

    @classmethod
    def permanent(cls, response: str, status: int | str | None = None) -> SendOutcome:
        """A refusal that must not be resent."""
        return cls(False, False, response, status)

    def raise_for_outcome(self) -> None:
        """Raise unless delivered.

        Raises
        ------
        DeliveryError
            Not delivered, retryable.
        PermanentDeliveryError
            Not delivered, not retryable.
        """
        if self.delivered:
            return
        if self.retryable:
            raise DeliveryError(self.response)
        raise PermanentDeliveryError(self.response)


@runtime_checkable
class Sender(Protocol):
    """Something that delivers one payload to one destination, once."""

    def send(self, payload: bytes | Dataset) -> SendOutcome:
        """Make one delivery attempt of ``payload`` and report the outcome (never raises for the peer)."""
        ...


# -- Kept-open connections ------------------------------------------------------------------------------


class _IdleReaper:
    """One daemon thread that closes the connections senders keep open once they have been idle too long.

    A sender registers itself (:meth:`watch`) while it keeps a connection open after a send, and the reaper
    keeps it referenced until that connection is closed: a sender dropped without ``close()`` still has
    its connection closed ``keep_open_s`` after its last use. The thread exits when nothing is watched and
    starts again on the next :meth:`watch`.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._watched: set[_KeepOpen] = set()
        self._thread: threading.Thread | None = None
        self._changed = False

    def watch(self, sender: _KeepOpen) -> None:
        """Close ``sender``'s connection once it has been idle for its ``keep_open_s``."""
        with self._cond:
            if sender in self._watched:
                return  # the reaper reads the new last-use time when it next looks
            self._watched.add(sender)
            self._changed = True
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ecgcad-idle-connections", daemon=True)
                self._thread.start()
            self._cond.notify()

    def forget(self, sender: _KeepOpen) -> None:
        """Stop watching ``sender`` (its connection is closed)."""
        with self._cond:
            self._watched.discard(sender)

    def _run(self) -> None:
        while True:
            with self._cond:
                watched = list(self._watched)
                if not watched:
                    self._thread = None
                    return
                self._changed = False
            # Senders are called without the reaper's lock: they take their own lock first, then forget().
            waits = [left for sender in watched if (left := sender._close_if_idle()) is not None]
            with self._cond:
                if not self._changed:
                    self._cond.wait(timeout=max(0.01, min(waits, default=0.0)))


_REAPER = _IdleReaper()
os.register_at_fork(after_in_child=_REAPER._reset)


class _KeepOpen:
    """The keep-open bookkeeping the DICOM and MLLP senders share.

    A subclass holds at most one connection, guarded by ``_lock`` (one send, close or idle check at a
    time), and implements :meth:`_has_connection` and :meth:`_drop_connection`.
    """

    keep_open_s: float
    _lock: threading.Lock
    _last_used: float
    _connecting_since: float | None = None

    @property
    def is_open(self) -> bool:
        """True while a connection is kept open (it may still turn out dead at the next send)."""
        return self._has_connection()

    @property
    def connecting(self) -> bool:
        """True while a new connection is being set up and has not carried an answer yet (DICOM: association
        negotiation; MLLP: until the first acknowledgement). A peer that serves one connection at a time
        holds this one off while another connection to it stays open."""
        return self._connecting_since is not None

    def _has_connection(self) -> bool:
        raise NotImplementedError

    def _drop_connection(self, *, graceful: bool = True) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the kept-open connection, if any (the next :meth:`send` opens a new one)."""
        with self._lock:
            self._drop_connection(graceful=True)
            _REAPER.forget(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kept(self) -> None:
        """The connection stays open for the next send: note the time, let the reaper close it later."""
        self._last_used = time.monotonic()
        _REAPER.watch(self)

    def _idle_expired(self) -> bool:
        return time.monotonic() - self._last_used >= self.keep_open_s

    def _close_if_idle(self) -> float | None:
        """For the reaper: close the connection when idle too long.

        Returns
        -------
        float or None
            Seconds until the connection should be checked again, or ``None`` when there is none left.
        """
        if not self._lock.acquire(blocking=False):
            return self.keep_open_s  # sending now; idle again at the earliest keep_open_s after it
        try:
            if self._has_connection():
                left = self._last_used + self.keep_open_s - time.monotonic()
                if left > 0:
                    return left
                logger.debug("%r: closing the connection idle for %.1f s", self, self.keep_open_s)
                self._drop_connection(graceful=True)
            _REAPER.forget(self)
            return None
        except Exception:  # noqa: BLE001 - a failing close must not stop the reaper
            logger.warning("%r: closing an idle connection failed", self, exc_info=True)
            _REAPER.forget(self)
            return None
        finally:
            self._lock.release()


def _closed_or_unexpected_data(sock: socket.socket) -> bool:
    """True when an idle connection is readable: the peer closed it (or sent something unasked)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
