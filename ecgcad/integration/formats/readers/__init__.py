"""ECG format readers: bytes in any supported format → canonical :class:`~ecgcad.integration.formats.ecg.Ecg`.

:func:`decode` recognises the format by content, never by file name:

============  ==================================================================  ===================
format        recognised by                                                       reader
============  ==================================================================  ===================
``dicom``     128-byte preamble + ``DICM``, or a bare Little Endian dataset        :mod:`.dicom`
``muse``      XML whose root element is ``RestingECG``                            :mod:`.muse`
``aecg``      XML whose root element is ``AnnotatedECG``                          :mod:`.aecg`
``hl7v2``     a message starting with ``MSH`` (MLLP framing allowed)              :mod:`.hl7v2`
============  ==================================================================  ===================

Every failure is a :class:`~ecgcad.errors.DecodeError` (or its subclass
:class:`~ecgcad.errors.UnsupportedFormatError`) with a one-line reason; no other exception escapes.
"""

from __future__ import annotations

import logging
import struct

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import Ecg
from ecgcad.integration.formats.readers._xml import root_name

__all__ = ["FORMATS", "decode", "detect_format"]

logger = logging.getLogger(__name__)

#: The formats :func:`decode` reads (values of ``Ecg.format``).
FORMATS: tuple[str, ...] = ("dicom", "muse", "aecg", "hl7v2")

#: Inputs larger than this are refused (a resting ECG object is well under 10 MB).
MAX_INPUT_BYTES = 128 * 1024 * 1024

_MAX_NESTING = 2


def detect_format(data: bytes) -> str:
    """Recognise the format of ``data`` by content.

    Parameters
    ----------
    data:
        The object as received.

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    UnsupportedFormatError
        The content is none of the supported formats (the message says what it looks like).
    """
    from ecgcad.integration.formats.readers.dicom import looks_like_dicom
    from ecgcad.integration.formats.readers.hl7v2 import looks_like_hl7

    if not data:
        raise UnsupportedFormatError("empty input")
    if looks_like_dicom(data):
        return "dicom"
    if looks_like_hl7(data):
        return "hl7v2"
    root = root_name(data)
    if root == "RestingECG":
        return "muse"
    if root == "AnnotatedECG":
        return "aecg"
    if root is not None:
        raise UnsupportedFormatError(
            f"XML document with root {root[:40]!r} is not MUSE RestingECG or HL7 aECG"
        )
    if data[:4] == b"%PDF":
        raise UnsupportedFormatError("a PDF document is not an ECG waveform")
    raise UnsupportedFormatError("not DICOM, MUSE XML, HL7 aECG XML or HL7 v2")


def decode(data: bytes, *, filename: str | None = None) -> Ecg:
    """Decode one ECG object to the canonical :class:`Ecg`.

    Parameters
    ----------
    data:
        The object: a DICOM file, a MUSE or aECG XML document, or one HL7 v2 message (MLLP framing allowed).
    filename:
        Only used in log messages; the format is always recognised by content.

    Returns
    -------
    Ecg
        Signal in mV, canonical lead order; ``format``, ``notes``, ``source_leads``, ``derived_leads`` and
        ``identifiers`` filled by the reader.

    Raises
    ------
    UnsupportedFormatError
        Not a supported format (or a refused DICOM SOP class).
    DecodeError
        A supported format that cannot be read.
    """
    return _decode(data, filename, 0)


def _decode(data: bytes, filename: str | None, depth: int) -> Ecg:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data) if not isinstance(data, bytes) else data
    if len(data) > MAX_INPUT_BYTES:
        raise DecodeError(f"input larger than {MAX_INPUT_BYTES} bytes")
    fmt = detect_format(data)
    try:
        if fmt == "dicom":
            from ecgcad.integration.formats.readers.dicom import read_dicom

            ecg = read_dicom(data)
        elif fmt == "muse":
            from ecgcad.integration.formats.readers.muse import read_muse

            ecg = read_muse(data)
        elif fmt == "aecg":
            from ecgcad.integration.formats.readers.aecg import read_aecg

            ecg = read_aecg(data)
        else:
            from ecgcad.integration.formats.readers.hl7v2 import read_hl7v2

            if depth >= _MAX_NESTING:
                raise DecodeError("HL7 message nested too deeply")
            ecg = read_hl7v2(data, lambda inner: _decode(inner, filename, depth + 1))
    except DecodeError:
        raise
    except (
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        OverflowError,
        UnicodeError,
        struct.error,
        OSError,
        EOFError,
    ) as exc:
        # Garbage that slipped past a reader's own checks: still a typed, one-line decode error.
        logger.debug("decode of %s failed inside the %s reader", filename or "input", fmt, exc_info=True)
        raise DecodeError(f"{fmt} data cannot be decoded: {type(exc).__name__}: {str(exc)[:120]}") from exc
    logger.debug("decoded %s as %s (%d leads found)", filename or "input", ecg.format, len(ecg.source_leads))
    return ecg
