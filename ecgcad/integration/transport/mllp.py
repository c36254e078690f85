"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): ``0x0B`` message ``0x1C 0x0D``.

Pure and transport-free: :func:`frame` wraps one message; :class:`MllpDecoder` is fed whatever a socket read
returned and hands back the complete messages in it. The decoder copes with frames split over reads, several
frames in one read, bytes before a start block (skipped and counted), and frames over a size limit
(:class:`MllpFrameTooLarge`, after which the stream cannot be trusted and the caller should close it).

A start block inside a frame that has not ended (a sender that lost or omitted an end block) ends that frame:
what came before it is handed back as an :class:`UnterminatedFrame` (malformed: never to be stored), and a new
frame starts. Gluing the two together would put the second message's content under the first one's header.

The one MLLP module: framing (:func:`frame`, :func:`unframe`), the incremental reader of a server
(:class:`MllpDecoder`, used by :mod:`ecgcad.listeners.hl7_server`), the blocking reader of a client
(:func:`read_frame`) and the outbound client (:class:`MllpSender`). The delivery pool, the test MLLP sink and
the test-material writers frame with it too.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from ecgcad.errors import BuildError
from ecgcad.integration.transport.senders import SendOutcome, _closed_or_unexpected_data, _KeepOpen

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
END_SEQUENCE = END_BLOCK + CARRIAGE_RETURN


class MllpFrameTooLarge(Exception):
    """A frame grew beyond the decoder's limit."""

    def __init__(self, size: int, limit: int, frames: list[bytes] | None = None) -> None:
        super().__init__(f"MLLP frame of at least {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        #: Complete frames that preceded the oversized one in the same :meth:`MllpDecoder.feed` call.
        self.frames: list[bytes] = frames or []


class UnterminatedFrame(bytes):
    """The bytes of a frame that a start block cut short before its end block: malformed, to be refused.

    A ``bytes`` subclass so that :meth:`MllpDecoder.feed` keeps returning one list, in stream order; tell it
    apart with ``type(message) is UnterminatedFrame``.
    """

    __slots__ = ()


def frame(message: bytes | str, *, encoding: str = "utf-8") -> bytes:
    """Wrap one HL7 message in an MLLP block.

    Parameters
    ----------
    message:
        The message (segments separated by ``\\r``); ``str`` is encoded with ``encoding``.
    encoding:
        Character set for ``str`` messages.

    Returns
    -------
    bytes
        ``0x0B`` + message + ``0x1C 0x0D``.

    Raises
    ------
    ValueError
        The message contains a start or end block byte (it could not be framed unambiguously).
    """
    data = message.encode(encoding) if isinstance(message, str) else bytes(message)
    if START_BLOCK in data or END_BLOCK in data:
        raise ValueError("an HL7 message must not contain MLLP block characters (0x0B, 0x1C)")
    return START_BLOCK + data + END_SEQUENCE


class MllpDecoder:
    """Incremental MLLP deframer.

    Parameters
    ----------
    max_frame_bytes:
        Largest message accepted (payload bytes, without the block characters); ``0`` = unlimited.

    Attributes
    ----------
    discarded_bytes:
        Bytes seen outside any frame (before a start block) so far.
    unterminated_frames:
        Frames cut short by a start block so far (each was handed back as an :class:`UnterminatedFrame`).
    """

    def __init__(self, max_frame_bytes: int = 0) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._skip_cr = False
        self.discarded_bytes = 0
        self.unterminated_frames = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    @property
    def in_frame(self) -> bool:
        """True while a start block was seen and its end not yet."""
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes read from the peer; return the complete messages they finished, in order.

        A frame cut short by a start block comes back, in its place in the order, as an
        :class:`UnterminatedFrame`.

        Raises
        ------
        MllpFrameTooLarge
            The current frame exceeds ``max_frame_bytes`` (the frames completed before it are lost with the
            exception only if they were in the same call — callers feed reads of bounded size).
        """
        out: list[bytes] = []
        view = memoryview(data)
        pos = 0
        n = len(data)
        if self._skip_cr and n:
            # the end block's carriage return arrived in this read
            self._skip_cr = False
            if data[:1] == CARRIAGE_RETURN:
                pos = 1
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    self.discarded_bytes += n - pos
                    break
                self.discarded_bytes += start - pos
                pos = start + 1
                self._in_frame = True
                self._buffer.clear()
                continue
            end = data.find(END_BLOCK, pos)
            # A start block before the end block (or in what arrived of this frame) means the sender began a
            # new message without ending this one: this frame ends there, malformed.
            restart = data.find(START_BLOCK, pos, n if end < 0 else end)
            if restart >= 0:
                self._buffer += view[pos:restart]
                self._check_size(out)
                out.append(UnterminatedFrame(self._buffer))
                self._buffer.clear()
                self.unterminated_frames += 1
                pos = restart + 1  # still in a frame: the one this start block opened
                continue
            if end < 0:
                self._buffer += view[pos:]
                self._check_size(out)
                break
            self._buffer += view[pos:end]
            self._check_size(out)
            # The end block must be followed by a carriage return; tolerate a missing CR only when the next
            # byte is a new start block or the data ends (some senders omit it).
            after = end + 1
            if after < n and data[after : after + 1] == CARRIAGE_RETURN:
                after += 1
            elif after == n:
                self._skip_cr = True
            out.append(bytes(self._buffer))
            self._buffer.clear()
            self._in_frame = False
            pos = after
        return out

    def _check_size(self, done: list[bytes]) -> None:
        if self.max_frame_bytes and len(self._buffer) > self.max_frame_bytes:
            size = len(self._buffer)
            self._buffer.clear()
            self._in_frame = False
            raise MllpFrameTooLarge(size, self.max_frame_bytes, done)

    def reset(self) -> None:
        """Forget any partial frame."""
        self._buffer.clear()
        self._in_frame = False
        self._skip_cr = False


def unframe(data: bytes) -> bytes:
    """``data`` without its MLLP framing when it has some (a start block after nothing but whitespace)."""
    start = data.find(START_BLOCK)
    if start >= 0 and data[:start].strip() == b"":
        end = data.find(END_BLOCK, start + 1)
        return data[start + 1 : end if end >= 0 else len(data)]
    return data


def read_frame(
    sock: socket.socket,
    *,
    deadline: float,
    max_bytes: int = 16 * 1024 * 1024,
    buffer: bytearray | None = None,
) -> bytes:
    """Read one MLLP block from ``sock`` and return the message inside it.

    Bytes before the start block are ignored; reading stops at the first ``0x1C 0x0D``. Pass ``buffer``
    (empty) to see every byte read, also after an exception and including any after the end block.

    Raises
    ------
    TimeoutError
        ``deadline`` (a :func:`time.monotonic` value) passed first.
    ConnectionError
        The peer closed the connection before the end block.
    ValueError
        The block exceeds ``max_bytes``.
    """
    buf = bytearray() if buffer is None else buffer
    while True:
        end = buf.find(END_SEQUENCE)
        if end >= 0:
            start = buf.find(START_BLOCK)
            return bytes(buf[start + 1 if 0 <= start < end else 0 : end])
        if len(buf) > max_bytes:
            raise ValueError("MLLP block too large")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no MLLP end block before the deadline")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)  # socket.timeout is TimeoutError
        if not chunk:
            raise ConnectionError("peer closed the connection before the end block")
        buf += chunk


def parse_ack(message: bytes) -> tuple[str, str, str]:
    """``(MSA-1, MSA-2, ERR/MSA-3 text)`` of an HL7 acknowledgement.

    Raises
    ------
    ValueError
        No MSH or MSA segment.
    """
    text = message.decode("utf-8", "replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise ValueError("acknowledgement does not start with MSH")
    sep = segments[0][3]
    msa = next((s.split(sep) for s in segments if s.startswith("MSA")), None)
    if msa is None:
        raise ValueError("acknowledgement has no MSA segment")
    code = msa[1] if len(msa) > 1 else ""
    control = msa[2] if len(msa) > 2 else ""
    detail = msa[3] if len(msa) > 3 else ""
    err = next((s for s in segments if s.startswith("ERR")), None)
    if err and not detail:
        detail = err[4:]
    return code, control, detail


class MllpSender(_KeepOpen):
    """HL7 v2 client over MLLP: sends a message and reads its acknowledgement.

    With ``keep_open_s > 0`` the TCP connection stays open between :meth:`send` calls (MLLP carries any
    number of messages per connection, one acknowledged at a time). A kept connection that the peer has
    closed is replaced before sending; one that fails while sending or before any byte of the
    acknowledgement arrived is replaced and the message sent again in the same call. After a timeout, an
    unparsable acknowledgement or one for another message the connection is closed, never reused. It is
    closed once idle for ``keep_open_s`` and on :meth:`close`.

    Parameters
    ----------
    host, port:
        The MLLP server.
    timeout:
        Seconds for connecting and, separately, for the whole acknowledgement to arrive.
    keep_open_s:
        Seconds an idle connection is kept for the next message; 0 (default) opens one per :meth:`send`.

    Attributes
    ----------
    connections:
        TCP connections opened so far.
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0, *, keep_open_s: float = 0.0) -> None:
        if not 1 <= int(port) <= 65535:
            raise ValueError("port must be in 1..65535")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if not keep_open_s >= 0:
            raise ValueError("keep_open_s must be >= 0")
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.keep_open_s = float(keep_open_s)
        self.connections = 0
        self._lock = threading.Lock()
        self._last_used = 0.0
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:
        return f"MllpSender({self.host!r}, {self.port})"

    def send(self, payload: bytes | Dataset) -> SendOutcome:
        """Send one ER7 message (``\\r``-separated, unframed) and classify the acknowledgement.

        Parameters
        ----------
        payload:
            The HL7 message bytes.

        Returns
        -------
        SendOutcome
            See the module docstring for the classification; ``status`` is MSA-1.

        Raises
        ------
        BuildError
            ``payload`` is not an HL7 message (our bug, not the peer's).
        """
        if not isinstance(payload, bytes | bytearray) or not bytes(payload).startswith(b"MSH"):
            raise BuildError("MLLP payload must be HL7 ER7 bytes starting with MSH")
        message = bytes(payload)
        control_id = _control_id(message)
        try:
            framed = frame(message)
        except ValueError as exc:
            raise BuildError("message contains MLLP framing characters") from exc
        with self._lock:
            try:
                reply = self._exchange(framed)
            finally:
                self._connecting_since = None
            if isinstance(reply, SendOutcome):
                return self._log(reply, control_id)
            outcome, in_step = self._classify(reply, control_id)
            if in_step and self.keep_open_s > 0:
                self._kept()
            else:
                self._drop_connection()
        return self._log(outcome, control_id)

    def _exchange(self, frame: bytes) -> bytes | SendOutcome:
        """Send ``frame`` and read one acknowledgement: its message, or the failure (connection closed).

        An acknowledgement followed by more bytes closes the connection too (the stream is out of step).
        """
        for attempt in (1, 2):
            sock = self._sock
            if sock is not None and (self._idle_expired() or _closed_or_unexpected_data(sock)):
                self._drop_connection()
                sock = None
            reused = sock is not None
            received = bytearray()
            try:
                if sock is None:
                    self._connecting_since = time.monotonic()
                    sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                    self._sock = sock
                    self.connections += 1
                else:
                    sock.settimeout(self.timeout)
                sock.sendall(frame)
                reply = read_frame(sock, deadline=time.monotonic() + self.timeout, buffer=received)
            except TimeoutError:
                self._drop_connection()
                return SendOutcome.retry(f"no acknowledgement within {self.timeout:g} s")
            except ConnectionRefusedError:
                self._drop_connection()
                return SendOutcome.retry("connection refused")
            except (ConnectionError, OSError, ValueError) as exc:
                self._drop_connection()
                if reused and attempt == 1 and not received and isinstance(exc, OSError):
                    logger.info(
                        "MLLP to %s:%d: kept connection is gone (%s); sending on a new one",
                        self.host,
                        self.port,
                        type(exc).__name__,
                    )
                    continue
                return SendOutcome.retry(f"connection failed: {type(exc).__name__}: {exc}")
            if len(received) > received.find(END_SEQUENCE) + len(END_SEQUENCE):
                self._drop_connection()
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _classify(self, reply: bytes, control_id: str) -> tuple[SendOutcome, bool]:
        """The outcome of ``reply``, and whether it answered our message (the connection may be reused)."""
        try:
            code, echoed, detail = parse_ack(reply)
        except ValueError as exc:
            return SendOutcome.retry(f"unparsable acknowledgement: {exc}"), False
        in_step = echoed == control_id
        text = f"MSA {code}" + (f": {detail[:80]}" if detail else "")
        if code in ("AA", "CA"):
            if not in_step:
                return SendOutcome.retry(
                    f"{text} for another message (MSA-2 does not echo MSH-10)", code
                ), False
            return SendOutcome.ok(text, code), True
        if code in ("AE", "CE"):
            return SendOutcome.retry(text, code), in_step
        if code in ("AR", "CR"):
            return SendOutcome.permanent(text, code), in_step
        return SendOutcome.retry(f"unknown acknowledgement code {code!r}", code), in_step

    def _has_connection(self) -> bool:
        return self._sock is not None

    def _drop_connection(self, *, graceful: bool = True) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _log(self, outcome: SendOutcome, control_id: str) -> SendOutcome:
        logger.log(
            logging.INFO if outcome.delivered else logging.WARNING,
            "MLLP msh10=%s to %s:%d: delivered=%s retryable=%s %s",
            control_id,
            self.host,
            self.port,
            outcome.delivered,
            outcome.retryable,
            outcome.response,
        )
        return outcome


def _control_id(message: bytes) -> str:
    first = message.split(b"\r", 1)[0].decode("utf-8", "replace")
    fields = first.split(first[3]) if len(first) > 3 else []
    return fields[9] if len(fields) > 9 else ""
