"""A small, fast DICOM element walker for the waveform reader.

pydicom builds a :class:`~pydicom.dataset.Dataset` for every item of every sequence it meets; a real ECG
carries dozens of annotation items, which alone costs more than our decode budget (5 ms). This walker
reads Explicit and Implicit VR Little Endian (what ECG carts and MUSE send), keeps only the top-level
elements and the sequences the reader asks for, and returns element *positions* in the original buffer so
that the waveform can be viewed with :func:`numpy.frombuffer` without a copy. Everything else (deflate,
big endian, broken encodings) goes through pydicom (:class:`DatasetNode`).
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ecgcad.errors import DecodeError

if TYPE_CHECKING:
    from pydicom import Dataset

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_MAX_DEPTH = 32

_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<L").unpack_from
_tag_vr_len = struct.Struct("<HH2sH").unpack_from
_tag_len = struct.Struct("<HHL").unpack_from


class _Malformed(DecodeError):
    """The DICOM byte stream is malformed."""


class Node(Protocol):
    """Read access to one dataset (top level or a sequence item)."""

    def text(self, tag: int) -> str | None:
        """The value as text (trailing padding removed); ``None`` if absent or empty."""
        ...

    def number(self, tag: int) -> float | None:
        """The first value of a DS / IS element; ``None`` if absent or empty."""
        ...

    def uint(self, tag: int, size: int) -> int | None:
        """The first value of a US (``size`` 2) or UL (``size`` 4) element."""
        ...

    def items(self, tag: int) -> list[Node]:
        """The items of a sequence (empty if absent)."""
        ...

    def raw(self, tag: int) -> tuple[Any, int, int] | None:
        """``(buffer, offset, length)`` of a binary value, without copying."""
        ...

    def has(self, tag: int) -> bool:
        """Whether the element is present."""
        ...


def _decode_text(value: bytes, encodings: list[str] | None) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        pass
    from pydicom.charset import decode_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decode_bytes(value, encodings or ["iso8859"], {0x5C, 0x3D, 0x5E})


class RawNode:
    """A dataset read by :class:`Walker`: tag → ``(vr, offset, length)`` or a list of item nodes."""

    __slots__ = ("_buf", "_elems", "encodings")

    def __init__(self, buf: bytes, elems: dict[int, Any], encodings: list[str] | None) -> None:
        self._buf = buf
        self._elems = elems
        self.encodings = encodings

    def has(self, tag: int) -> bool:  # noqa: D102
        return tag in self._elems

    def _bytes(self, tag: int) -> bytes | None:
        e = self._elems.get(tag)
        if e is None or isinstance(e, list):
            return None
        _vr, off, length = e
        return self._buf[off : off + length]

    def text(self, tag: int) -> str | None:  # noqa: D102
        value = self._bytes(tag)
        if not value:
            return None
        s = _decode_text(value, self.encodings).rstrip(" \x00")
        return s or None

    def number(self, tag: int) -> float | None:  # noqa: D102
        s = self.text(tag)
        if s is None:
            return None
        first = s.split("\\")[0].strip()
        if not first:
            return None
        try:
            return float(first)
        except ValueError as exc:
            raise DecodeError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a number") from exc

    def uint(self, tag: int, size: int) -> int | None:  # noqa: D102
        value = self._bytes(tag)
        if value is None or len(value) < size:
            return None
        return int(_u16(value)[0] if size == 2 else _u32(value)[0])

    def items(self, tag: int) -> list[Node]:  # noqa: D102
        e = self._elems.get(tag)
        return list(e) if isinstance(e, list) else []

    def raw(self, tag: int) -> tuple[Any, int, int] | None:  # noqa: D102
        e = self._elems.get(tag)
        if e is None or isinstance(e, list):
            return None
        return self._buf, e[1], e[2]


class Walker:
    """Walk a Little Endian DICOM byte stream, keeping top-level elements and the ``keep`` sequences.

    Parameters
    ----------
    buf:
        The whole object.
    keep:
        Tags of sequences to parse into items (at any depth); other sequences are skipped.
    """

    def __init__(self, buf: bytes, keep: Iterable[int]) -> None:
        self.buf = buf
        self.n = len(buf)
        self.keep = frozenset(keep)
        self.encodings: list[str] | None = None

    def read(self, pos: int, implicit: bool) -> RawNode:
        """Read the dataset from ``pos`` to the end of the buffer."""
        elems, _ = self._dataset(pos, self.n, implicit, 0, in_item=False)
        return RawNode(self.buf, elems, self.encodings)

    def _header(self, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        if pos + 8 > self.n:
            raise _Malformed("DICOM data ends inside an element header")
        if implicit:
            g, e, length = _tag_len(self.buf, pos)
            return (g << 16) | e, None, length, pos + 8
        g, e, vr, short = _tag_vr_len(self.buf, pos)
        tag = (g << 16) | e
        if g == 0xFFFE:
            return tag, None, _u32(self.buf, pos + 4)[0], pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > self.n:
                raise _Malformed("DICOM data ends inside an element header")
            return tag, vr, _u32(self.buf, pos + 8)[0], pos + 12
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            # Explicit VR claimed but this element is implicit (a known vendor slip): read it as implicit.
            g, e, length = _tag_len(self.buf, pos)
            return tag, None, length, pos + 8
        return tag, vr, short, pos + 8

    def _dataset(
        self, pos: int, end: int, implicit: bool, depth: int, *, in_item: bool
    ) -> tuple[dict[int, Any], int]:
        """The elements of a kept dataset (the root or an item of a kept sequence); sequences that are not
        kept are stepped over (:meth:`_skip_sequence`), recorded as empty at the root."""
        if depth > _MAX_DEPTH:
            raise _Malformed("DICOM sequences nested too deeply")
        elems: dict[int, Any] = {}
        while pos < end:
            tag, vr, length, vpos = self._header(pos, implicit)
            if tag == _ITEM_END:
                if not in_item:
                    raise _Malformed("unexpected item delimiter")
                return elems, vpos
            if tag >> 16 == 0xFFFE:
                raise _Malformed(f"unexpected delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if length == _UNDEFINED:
                # SQ, or UN holding an implicit-VR sequence (PS3.5 6.2.2).
                sub_implicit = implicit or vr == b"UN"
                if tag not in self.keep:
                    pos = self._skip_sequence(vpos, end, sub_implicit, depth + 1)
                    if depth == 0:
                        elems[tag] = []
                    continue
                elems[tag], pos = self._sequence(vpos, end, sub_implicit, depth + 1, undefined=True)
                continue
            vend = vpos + length
            if vend > end:
                raise _Malformed(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end of the data"
                )
            if tag in self.keep and (vr == b"SQ" or vr is None):
                elems[tag], _ = self._sequence(vpos, vend, implicit, depth + 1, undefined=False)
            elif vr != b"SQ" or depth == 0:
                elems[tag] = (vr, vpos, length)
            if tag == 0x00080005 and depth == 0:
                self._set_charset(vpos, length)
            pos = vend
        if in_item:
            raise _Malformed("DICOM data ends inside a sequence item")
        return elems, pos

    def _sequence(
        self, pos: int, end: int, implicit: bool, depth: int, *, undefined: bool
    ) -> tuple[list[RawNode], int]:
        """The items of a kept sequence."""
        if depth > _MAX_DEPTH:
            raise _Malformed("DICOM sequences nested too deeply")
        items: list[RawNode] = []
        while True:
            if not undefined and pos >= end:
                return items, pos
            if pos + 8 > min(end, self.n):
                raise _Malformed("DICOM data ends inside a sequence")
            g, e, length = _tag_len(self.buf, pos)
            tag = (g << 16) | e
            pos += 8
            if tag == _SEQ_END:
                return items, pos
            if tag != _ITEM:
                raise _Malformed(f"expected a sequence item, found ({g:04X},{e:04X})")
            if length == _UNDEFINED:
                elems, pos = self._dataset(pos, end, implicit, depth, in_item=True)
            else:
                iend = pos + length
                if iend > end:
                    raise _Malformed("a sequence item runs past the end of its sequence")
                elems = self._dataset(pos, iend, implicit, depth, in_item=False)[0]
                pos = iend
            items.append(RawNode(self.buf, elems, self.encodings))

    def _skip_sequence(self, pos: int, end: int, implicit: bool, depth: int) -> int:
        """The position after an undefined-length sequence that is not kept (its items are walked only
        far enough to find their ends)."""
        if depth > _MAX_DEPTH:
            raise _Malformed("DICOM sequences nested too deeply")
        buf, limit = self.buf, min(end, self.n)
        while True:
            if pos + 8 > limit:
                raise _Malformed("DICOM data ends inside a sequence")
            g, e, length = _tag_len(buf, pos)
            tag = (g << 16) | e
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise _Malformed(f"expected a sequence item, found ({g:04X},{e:04X})")
            if length != _UNDEFINED:
                pos += length
                if pos > end:
                    raise _Malformed("a sequence item runs past the end of its sequence")
                continue
            pos = self._skip_item(pos, end, implicit, depth)

    def _skip_item(self, pos: int, end: int, implicit: bool, depth: int) -> int:
        """The position after the item delimiter of an undefined-length item that is not kept."""
        header = self._header
        while pos < end:
            tag, vr, length, vpos = header(pos, implicit)
            if tag == _ITEM_END:
                return vpos
            if tag >> 16 == 0xFFFE:
                raise _Malformed(f"unexpected delimiter ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if length == _UNDEFINED:
                pos = self._skip_sequence(vpos, end, implicit or vr == b"UN", depth + 1)
                continue
            pos = vpos + length
            if pos > end:
                raise _Malformed(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end of the data"
                )
        raise _Malformed("DICOM data ends inside a sequence item")

    def _set_charset(self, pos: int, length: int) -> None:
        from pydicom.charset import convert_encodings

        terms = [t.strip() for t in self.buf[pos : pos + length].decode("ascii", "replace").split("\\")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.encodings = convert_encodings(terms or [""])
            except LookupError:
                self.encodings = None


class DatasetNode:
    """:class:`Node` over a pydicom :class:`~pydicom.dataset.Dataset` (the slow, general path)."""

    __slots__ = ("_ds",)

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds

    def has(self, tag: int) -> bool:  # noqa: D102
        return tag in self._ds

    def _value(self, tag: int) -> Any:  # noqa: ANN401 - pydicom's DataElement.value is Any
        if tag not in self._ds:
            return None
        return self._ds[tag].value

    def text(self, tag: int) -> str | None:  # noqa: D102
        value = self._value(tag)
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif not isinstance(value, str) and hasattr(value, "__iter__") and not hasattr(value, "family_name"):
            value = "\\".join(str(v) for v in value)
        s = str(value).rstrip(" \x00")
        return s or None

    def number(self, tag: int) -> float | None:  # noqa: D102
        value = self._value(tag)
        if value is None or value == "":
            return None
        if not isinstance(value, str | bytes | int | float) and hasattr(value, "__len__"):
            if len(value) == 0:
                return None
            value = value[0]
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a number") from exc

    def uint(self, tag: int, size: int) -> int | None:  # noqa: D102
        value = self._value(tag)
        if value is None or value == "":
            return None
        if isinstance(value, list | tuple) or (hasattr(value, "__len__") and not isinstance(value, str)):
            value = value[0] if len(value) else None
        return None if value is None else int(value)

    def items(self, tag: int) -> list[Node]:  # noqa: D102
        value = self._value(tag)
        if not value:
            return []
        return [DatasetNode(item) for item in value]

    def raw(self, tag: int) -> tuple[Any, int, int] | None:  # noqa: D102
        value = self._value(tag)
        if not isinstance(value, bytes | bytearray):
            return None
        return value, 0, len(value)
