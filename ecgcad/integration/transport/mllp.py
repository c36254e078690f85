"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): ``0x0B`` message ``0x1C 0x0D``.

Pure and transport-free: :func:`frame` wraps one message; :class:`MllpDecoder` is fed whatever a socket read
returned and hands back the complete messages in it. The decoder copes with frames split over reads, several
frames in one read, bytes before a start block (skipped and counted), and frames over a size limit
(:class:`MllpFrameTooLarge`, after which the stream cannot be trusted and the caller should close it).

A start block inside a frame that has not ended (a sender that lost or omitted an end block) ends that frame:
what came before it is handed back as an :class:`UnterminatedFrame` (malformed: never to be stored), and a new
frame starts. Gluing the two together would put the second message's content under the first one's header.

Used by the MLLP server (:mod:`ecgcad.listeners.hl7_server`) and the outbound MLLP sender.
"""

from __future__ import annotations

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


__all__ = [
    "END_BLOCK",
    "END_SEQUENCE",
    "START_BLOCK",
    "MllpDecoder",
    "MllpFrameTooLarge",
    "UnterminatedFrame",
    "frame",
]
