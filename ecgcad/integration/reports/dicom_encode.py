"""Fast Explicit VR Little Endian encoding of the DICOM objects we send (SR, Encapsulated PDF).

pydicom's writer (``pydicom.filewriter.write_dataset``, which pynetdicom's C-STORE also uses) writes each
element through a fresh buffer, converts the character set for every element and walks every nested
data set again for ambiguous VRs at each level; for a TID 1500 SR (about 200 data sets, 700 elements)
that is 10–20 ms. :func:`encode_dataset` produces **the same bytes** in a single pass: it encodes the value
representations our objects use itself (AE AS CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ
SS ST SV TM UC UI UL UR US UT UV) exactly as pydicom writes them, and hands everything else to pydicom:

- an element whose VR or value form it does not encode (AT, UN, a buffered or undefined-length value, a
  value over 64 KiB in a 16-bit-length VR, an unexpected value type, a raw element written as read) goes
  through pydicom's own ``write_data_element``;
- anything that needs pydicom's whole-tree handling (an ambiguous VR such as ``US or SS``, top-level Pixel
  Data, a transfer syntax other than Explicit VR Little Endian, an invalid preamble or file meta) makes
  the whole object go through pydicom's writer.

So the result is always what ``pydicom.dcmwrite(..., enforce_file_format=True)`` writes (for
:func:`encode_part10`) or ``write_dataset`` writes (for :func:`encode_dataset`), including its choices:
sequences and items with defined length unless the element / item was read with undefined length
(``is_undefined_length``, ``is_undefined_length_sequence_item``), UI padded with ``\\0`` and other
strings with a space, text of LO/LT/PN/SH/ST/UC/UT in the data set's Specific Character Set (inherited by
sequence items), the other string VRs in ISO 8859-1, DS/IS as their original string (or ``str()``),
DA/DT/TM as their original string (or formatted), and retired group lengths left out.
``tests/results/test_dicom_encode.py`` compares the bytes with pydicom's for every SR and PDF variant.
"""

from __future__ import annotations

import copy
import datetime
import functools
import io
import struct
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from pydicom.charset import (
    convert_encodings,
    custom_encoders,
    default_encoding,
    encode_string,
    need_tail_escape_sequence_encodings,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR, PersonName

__all__ = ["encode_dataset", "encode_part10", "part10_file"]

_EXPLICIT_LE = (False, True)
_PIXEL_DATA = 0x7FE00010
_SPECIFIC_CHARACTER_SET = 0x00080005
#: LUT descriptors: pydicom writes their first value as US even when the VR is SS.
_LUT_DESCRIPTOR_TAGS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})

_SHORT_HEADER = struct.Struct("<HH2sH").pack  # tag, VR, 16-bit length
_LONG_HEADER = struct.Struct("<HH2s2xL").pack  # tag, VR, 2 reserved bytes, 32-bit length
_ITEM_HEADER = struct.Struct("<HHL").pack
_UNDEFINED = 0xFFFFFFFF
_ITEM_UNDEFINED = _ITEM_HEADER(0xFFFE, 0xE000, _UNDEFINED)
_ITEM_DELIMITER = _ITEM_HEADER(0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER = _ITEM_HEADER(0xFFFE, 0xE0DD, 0)
_MULTI = (list, tuple, MultiValue)
_SIZED = (str, bytes, bytearray, list, tuple, MultiValue)
_NUMBER = (str, int, float, Decimal)
#: Values that are never empty (pydicom's VM is 1 for a value it cannot iterate).
_NOT_EMPTY = (int, float, Decimal, datetime.date, datetime.time, PersonName)


class _Delegate(Exception):
    """The object needs pydicom's whole-tree handling: encode all of it with pydicom."""


class _Charset:
    """A converted character set (``convert_encodings``) and how text is encoded in it (``encode_string``)."""

    __slots__ = ("encodings", "encode")

    def __init__(self, encodings: list[str]) -> None:
        self.encodings = encodings
        self.encode: Callable[[str], bytes] = functools.partial(encode_string, encodings=encodings)
        codec = encodings[0] if len(encodings) == 1 else None
        if (
            codec is not None
            and codec not in custom_encoders
            and codec not in need_tail_escape_sequence_encodings
        ):
            # encode_string with one plain Python codec is str.encode; a failure goes back to encode_string
            # (which warns and replaces, or raises, as configured).
            def encode(value: str) -> bytes:
                try:
                    return value.encode(codec)
                except UnicodeError:
                    return encode_string(value, encodings)

            self.encode = encode


# -- values -----------------------------------------------------------------------------------------------
# Each encoder returns the padded value bytes, or None when it does not handle the value's form (pydicom's
# element writer then writes the element). They mirror pydicom.filewriter's write_* functions.

_ValueEncoder = Callable[[Any, _Charset], bytes | None]


def _all_str(values: Iterable[object]) -> bool:
    return all(isinstance(v, str) for v in values)


def _string(value: Any, padding: str) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    """AE AS CS UR (space) and UI (``\\0``): ISO 8859-1, backslash between values (``write_string``)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, _MULTI) and _all_str(value):
        text = "\\".join(value)
    else:
        return None
    if len(text) % 2:
        text += padding
    return text.encode(default_encoding)


def _spaced(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    return _string(value, " ")


def _uid(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    return _string(value, "\0")


def _text(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    """LO LT SH ST UC UT in the data set's character set (``write_text``)."""
    if isinstance(value, str):
        data = charset.encode(value)
    elif isinstance(value, _MULTI) and _all_str(value):
        data = b"\\".join([charset.encode(v) for v in value])
    elif isinstance(value, bytes):
        data = value
    else:
        return None
    return data + b" " if len(data) % 2 else data


def _person_name(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    """PN (``write_PN``: each name encoded by :meth:`PersonName.encode`)."""
    if isinstance(value, PersonName):
        names: Any = (value,)
    elif isinstance(value, _MULTI) and len(value) > 1 and all(isinstance(v, PersonName) for v in value):
        names = value
    else:
        return None  # pydicom takes a one-item list for one value and fails on it: let it
    data = b"\\".join([name.encode(charset.encodings) for name in names])
    return data + b" " if len(data) % 2 else data


def _number_string(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    """DS and IS: the original string when there is one, else ``str()`` (``write_number_string``)."""
    if isinstance(value, _MULTI):
        text = "\\".join([v.original_string if hasattr(v, "original_string") else str(v) for v in value])
    elif isinstance(value, _NUMBER):
        text = value.original_string if hasattr(value, "original_string") else str(value)
    else:
        return None  # e.g. a numpy array, which pydicom writes value by value
    if len(text) % 2:
        text += " "
    return text.encode(default_encoding)


def _date_time(strftime: str, strftime_fraction: str | None) -> _ValueEncoder:
    """DA, DT, TM: strings as they are, date/time objects by their original string or formatted."""

    def fmt(v: Any) -> str:  # noqa: ANN401 - a DA/DT/TM value or a date, time or datetime
        if v is None:
            return ""
        if hasattr(v, "original_string"):
            return v.original_string
        if strftime_fraction is not None and v.microsecond > 0:
            return v.strftime(strftime_fraction)
        return v.strftime(strftime)

    def encode(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
        if isinstance(value, str):
            return _string(value, " ")
        if isinstance(value, _MULTI):
            text = "\\".join([v if isinstance(v, str) else fmt(v) for v in value])
        else:
            text = fmt(value)
        if len(text) % 2:
            text += " "
        return bytes(text.encode(default_encoding))

    return encode


def _numbers(code: str) -> _ValueEncoder:
    """US UL SS SL SV UV FD FL (``write_numbers``)."""
    single = struct.Struct("<" + code).pack

    def encode(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
        if hasattr(value, "append"):
            return struct.pack(f"<{len(value)}{code}", *value)
        return single(value)

    return encode


def _other(value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    """OB OD OF OL OV OW: the bytes, padded with ``\\0`` to even length."""
    if not isinstance(value, bytes | bytearray):
        return None
    data = bytes(value)
    return data + b"\0" if len(data) % 2 else data


_VALUE_ENCODERS: dict[str, _ValueEncoder] = {
    "AE": _spaced,
    "AS": _spaced,
    "CS": _spaced,
    "UR": _spaced,
    "UI": _uid,
    "LO": _text,
    "LT": _text,
    "SH": _text,
    "ST": _text,
    "UC": _text,
    "UT": _text,
    "PN": _person_name,
    "DS": _number_string,
    "IS": _number_string,
    "DA": _date_time("%Y%m%d", None),
    "DT": _date_time("%Y%m%d%H%M%S%z", "%Y%m%d%H%M%S.%f%z"),
    "TM": _date_time("%H%M%S", "%H%M%S.%f"),
    "US": _numbers("H"),
    "SS": _numbers("h"),
    "UL": _numbers("L"),
    "SL": _numbers("l"),
    "UV": _numbers("Q"),
    "SV": _numbers("q"),
    "FL": _numbers("f"),
    "FD": _numbers("d"),
    "OB": _other,
    "OD": _other,
    "OF": _other,
    "OL": _other,
    "OV": _other,
    "OW": _other,
}
_VR_BYTES = {vr.value: vr.value.encode("ascii") for vr in VR if len(vr.value) == 2}
_LONG_VRS = frozenset(vr.value for vr in EXPLICIT_VR_LENGTH_32)


# -- data sets --------------------------------------------------------------------------------------------


class _Encoder:
    """One encoding run (caches the converted character sets and the items already encoded)."""

    def __init__(self) -> None:
        self._charsets: dict[Any, _Charset] = {}
        self._items: dict[tuple[int, int, bool], tuple[Dataset, bytes]] = {}
        #: Elements written by pydicom's element writer (for tests and profiling).
        self.fallbacks = 0

    def charset(self, specific_character_set: str | list[str] | None) -> _Charset:
        """``convert_encodings`` as ``write_data_element`` calls it, once per distinct character set."""
        value = specific_character_set
        key = tuple(value) if isinstance(value, _MULTI) else value
        charset = self._charsets.get(key)
        if charset is None:
            charset = self._charsets[key] = _Charset(convert_encodings(value or [default_encoding]))
        return charset

    def dataset(self, ds: Dataset, parent_encoding: str | list[str], prepassed: bool) -> bytes:
        """The elements of ``ds`` as ``write_dataset`` writes them to an Explicit VR Little Endian file.

        ``prepassed``: an enclosing data set was written decoded, so pydicom's ambiguous-VR pass has already
        turned every raw sequence below it into a decoded one.
        """
        # write_dataset decodes raw elements (and corrects ambiguous VRs) unless the data set was read in
        # this very encoding and character set; then raw elements are written as they were read.
        decode = ds.original_encoding != _EXPLICIT_LE or ds.original_character_set != ds._character_set
        prepassed = prepassed or decode
        elements = ds._dict  # read-only; raw elements are converted through the Dataset, as pydicom does
        specific = parent_encoding
        if _SPECIFIC_CHARACTER_SET in elements:
            specific = ds.get("SpecificCharacterSet", parent_encoding)
        charset = self.charset(specific)
        out: list[bytes] = []
        for tag in sorted(elements, key=int):
            number = int(tag)
            if not number & 0xFFFF and number >> 16 > 6:
                continue  # retired group length (PS3.5 7.2): pydicom does not write it
            elem: Any = elements[tag]
            if isinstance(elem, RawDataElement):
                elem = ds[tag] if decode else ds.get_item(tag)
                if isinstance(elem, RawDataElement):
                    if elem.VR == VR.SQ and prepassed:
                        elem = ds[tag]
                    else:
                        out.append(self.fallback(elem, specific))
                        continue
            out.append(self.element(elem, number, specific, charset, prepassed))
        return b"".join(out)

    def element(
        self,
        elem: DataElement,
        tag: int,
        specific: str | list[str] | None,
        charset: _Charset,
        prepassed: bool,
    ) -> bytes:
        """One element (``tag`` is ``int(elem.tag)``), encoded by pydicom when this encoder cannot."""
        vr = elem.VR
        vr_bytes = _VR_BYTES.get(vr)
        if vr_bytes is None or tag == _PIXEL_DATA:
            raise _Delegate  # an ambiguous VR: its correction needs the whole tree (pydicom's pass)
        group, number = tag >> 16, tag & 0xFFFF
        value = elem.value
        if vr == "SQ":
            items = [self.item(item, charset.encodings, prepassed) for item in value] if value else []
            if elem.is_undefined_length:
                return b"".join([_LONG_HEADER(group, number, b"SQ", _UNDEFINED), *items, _SEQUENCE_DELIMITER])
            body = b"".join(items)
            return _LONG_HEADER(group, number, b"SQ", len(body)) + body
        if elem.is_undefined_length or tag in _LUT_DESCRIPTOR_TAGS:
            return self.fallback(elem, specific)
        data: bytes | None
        if value is None:
            data = b""
        elif isinstance(value, _SIZED):
            data = _encode(vr, value, charset) if value else b""
        elif isinstance(value, _NOT_EMPTY):
            data = _encode(vr, value, charset)
        elif elem.is_buffered:
            data = None
        else:
            data = b"" if elem.is_empty else _encode(vr, value, charset)
        if data is None:
            return self.fallback(elem, specific)
        if vr in _LONG_VRS:
            return _LONG_HEADER(group, number, vr_bytes, len(data)) + data
        if len(data) > 0xFFFF:
            return self.fallback(elem, specific)  # pydicom writes it as UN (with a warning)
        return _SHORT_HEADER(group, number, vr_bytes, len(data)) + data

    def item(self, item: Dataset, encodings: list[str], prepassed: bool) -> bytes:
        """One sequence item (``write_sequence_item``: its parent encoding is the converted one).

        An item that appears more than once in the tree (the SR's vessel groups share their algorithm
        items) is encoded once: its bytes depend only on the item and these arguments.
        """
        key = (id(item), id(encodings), prepassed)
        cached = self._items.get(key)
        if cached is not None:
            return cached[1]
        content = self.dataset(item, encodings, prepassed)
        if item.is_undefined_length_sequence_item:
            encoded = _ITEM_UNDEFINED + content + _ITEM_DELIMITER
        else:
            encoded = _ITEM_HEADER(0xFFFE, 0xE000, len(content)) + content
        self._items[key] = (item, encoded)  # the item is kept so that its id is not reused meanwhile
        return encoded

    def fallback(self, elem: DataElement | RawDataElement, specific: str | list[str] | None) -> bytes:
        """``elem`` written by pydicom's own element writer."""
        self.fallbacks += 1
        fp = _explicit_le_buffer()
        write_data_element(fp, elem, specific)
        return fp.getvalue()


def _encode(vr: str, value: Any, charset: _Charset) -> bytes | None:  # noqa: ANN401 - an element value (pydicom: Any)
    """The value bytes of a non-empty value, or None for pydicom's element writer to write it."""
    encoder = _VALUE_ENCODERS.get(vr)
    if encoder is None:
        return None
    try:
        return encoder(value, charset)
    except Exception:  # noqa: BLE001 - pydicom's writer decides (and raises its own error)
        return None


def _explicit_le_buffer() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    return fp


def encode_dataset(ds: Dataset, *, parent_encoding: str | list[str] = default_encoding) -> bytes:
    """Encode the data set ``ds`` (no preamble, no file meta) in Explicit VR Little Endian.

    Parameters
    ----------
    ds:
        The data set (file meta, if any, is not encoded).
    parent_encoding:
        The character set text is encoded in when ``ds`` has no Specific Character Set (as
        ``pydicom.filewriter.write_dataset``).

    Returns
    -------
    bytes
        What ``write_dataset`` writes to an Explicit VR Little Endian buffer.

    Raises
    ------
    Exception
        Whatever pydicom's writer raises for a data set it cannot write.
    """
    try:
        return _Encoder().dataset(ds, parent_encoding, False)
    except _Delegate:
        fp = _explicit_le_buffer()
        write_dataset(fp, ds, parent_encoding)
        return fp.getvalue()


def encode_part10(ds: Dataset) -> bytes:
    """Encode ``ds`` in the DICOM File Format: preamble, ``DICM``, file meta, Explicit VR Little Endian data set.

    Parameters
    ----------
    ds:
        The object, with ``file_meta`` naming Explicit VR Little Endian (as the SR and PDF builders set it).
        Any other transfer syntax, or none, is written by pydicom.

    Returns
    -------
    bytes
        Byte for byte what ``ds.save_as(buffer, enforce_file_format=True)`` writes: the preamble (128 zero
        bytes when ``ds`` has none), the file meta with Media Storage SOP Class / Instance UIDs from the
        data set, the version, implementation UID and name pydicom adds when missing, and its group length.
        ``ds`` and its file meta are not changed (except as pydicom's own writer changes them: decoded raw
        elements, cached encoded person names).

    Raises
    ------
    Exception
        Whatever ``pydicom.dcmwrite`` raises for an object it cannot write.
    """
    meta = getattr(ds, "file_meta", None)
    preamble = getattr(ds, "preamble", None)
    if (
        meta is None
        or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian
        or (preamble and len(preamble) != 128)
        or any(tag >> 16 in (0, 2) for tag in ds.keys())
        or _PIXEL_DATA in ds
    ):
        return _pydicom_part10(ds)
    # dcmwrite's file meta handling, on a copy as dcmwrite makes one.
    meta = copy.deepcopy(meta)
    meta_class = meta.get("MediaStorageSOPClassUID", None)
    ds_class = ds.get("SOPClassUID", None)
    if meta_class is None or (ds_class and ds_class != meta_class):
        meta.MediaStorageSOPClassUID = ds_class
    meta_instance = meta.get("MediaStorageSOPInstanceUID", None)
    ds_instance = ds.get("SOPInstanceUID", None)
    if meta_instance is None or (ds_instance and ds_instance != meta_instance):
        meta.MediaStorageSOPInstanceUID = ds_instance
    try:
        validate_file_meta(meta, enforce_standard=True)
    except (ValueError, AttributeError):
        return _pydicom_part10(ds)  # raises the same error
    if "FileMetaInformationGroupLength" not in meta:
        meta.FileMetaInformationGroupLength = 0
    try:
        encoder = _Encoder()
        encoded_meta = encoder.dataset(meta, default_encoding, False)
        body = encoder.dataset(ds, default_encoding, False)
    except _Delegate:
        return _pydicom_part10(ds)
    # write_file_meta_info: the group length counts the bytes after its own 12-byte element, which is
    # then written again over the start of the group.
    meta.FileMetaInformationGroupLength = len(encoded_meta) - 12
    length_element = encoder.element(
        meta[0x00020000], 0x00020000, default_encoding, encoder.charset(default_encoding), False
    )
    encoded_meta = length_element + encoded_meta[len(length_element) :]
    return b"".join((preamble or b"\0" * 128, b"DICM", encoded_meta, body))


def part10_file(
    dataset: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str
) -> bytes:
    """The DICOM file (PS3.10) of a data set received already encoded (a C-STORE): preamble, ``DICM``, File
    Meta Information, the data set bytes unchanged.

    The meta group is a handful of fixed elements written directly (no pydicom dataset is built: this runs
    once per C-STORE); it names pynetdicom as the implementation, as pynetdicom's own
    ``Event.encoded_dataset`` does, and ``source_ae`` as the Source Application Entity Title.
    """
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    def element(elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
        if len(value) % 2:
            value += pad
        header = _LONG_HEADER if vr == b"OB" else _SHORT_HEADER
        return header(2, elem, vr, len(value)) + value

    group = b"".join(
        (
            element(0x0001, b"OB", b"\x00\x01", b"\x00"),
            element(0x0002, b"UI", sop_class_uid.encode("ascii", "replace"), b"\x00"),
            element(0x0003, b"UI", sop_instance_uid.encode("ascii", "replace"), b"\x00"),
            element(0x0010, b"UI", transfer_syntax_uid.encode("ascii"), b"\x00"),
            element(0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii"), b"\x00"),
            element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" "),
            element(0x0016, b"AE", source_ae.encode("ascii", "replace")[:16], b" ") if source_ae else b"",
        )
    )
    length = element(0x0000, b"UL", struct.pack("<L", len(group)), b"")
    return b"".join((b"\x00" * 128, b"DICM", length, group, dataset))


def _pydicom_part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
