"""HL7 v2 message header check, acknowledgement builder and tolerant order parsing.

The MLLP server must answer fast, so it reads only the MSH segment (:func:`parse_header`), stores the raw
message and acknowledges (:func:`build_ack`); the full parse happens in the worker (:func:`parse_order`, and
the formats readers for ORU^R01).

Acknowledgement modes (HL7 v2.5 §2.9): with MSH-15 and MSH-16 both empty the original mode answers every
message with ``AA``/``AE``/``AR``; otherwise the enhanced mode answers with the accept acknowledgement
``CA``/``CE``/``CR`` as MSH-15 asks (``AL`` always — also when empty —, ``NE`` never, ``ER`` only on error,
``SU`` only on success). We do not send application acknowledgements (MSH-16): the result ORU^R01 that
follows is the application-level answer.

Error codes are HL7 table 0357.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
import re
import time
from typing import Literal

from ecgcad.errors import DecodeError
from ecgcad.integration.transport.mllp import END_BLOCK, START_BLOCK
from ecgcad.logsetup import uid_hash

#: HL7 table 0357 codes we use.
ERR_SEGMENT_SEQUENCE = "100"
ERR_REQUIRED_FIELD_MISSING = "101"
ERR_UNSUPPORTED_MESSAGE_TYPE = "200"
ERR_UNSUPPORTED_EVENT_CODE = "201"
ERR_UNSUPPORTED_VERSION_ID = "203"
ERR_APPLICATION_RECORD_LOCKED = "206"
ERR_APPLICATION_INTERNAL_ERROR = "207"

_ERROR_TEXT = {
    ERR_SEGMENT_SEQUENCE: "Segment sequence error",
    ERR_REQUIRED_FIELD_MISSING: "Required field missing",
    ERR_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ERR_UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ERR_UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ERR_APPLICATION_RECORD_LOCKED: "Application record locked",
    ERR_APPLICATION_INTERNAL_ERROR: "Application internal error",
}

Outcome = Literal["accept", "error", "reject"]

_SEGMENT_SPLIT = re.compile(rb"\r\n|\r|\n")
_ORIGINAL = {"accept": "AA", "error": "AE", "reject": "AR"}
_ENHANCED = {"accept": "CA", "error": "CE", "reject": "CR"}


class Hl7HeaderError(DecodeError):
    """The message has no usable MSH segment."""

    def __init__(
        self, message: str | None = None, *, code: str = ERR_SEGMENT_SEQUENCE, location: str = "MSH"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.location = location


@dataclasses.dataclass(frozen=True, slots=True)
class MessageHeader:
    """The MSH fields the listener needs, as text (bytes decoded as Latin-1, so they echo byte for byte)."""

    field_separator: str = "|"
    encoding_characters: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    message_control_id: str = ""
    processing_id: str = ""
    version_id: str = ""
    accept_acknowledgment_type: str = ""
    application_acknowledgment_type: str = ""
    character_set: str = ""

    #: MSH-9.1 (``ORU``), MSH-9.2 (``R01``) and both ``^``-joined whatever the separators (``ORU^R01``):
    #: derived from :attr:`message_type` once (they are read several times per message).
    message_code: str = dataclasses.field(init=False, repr=False, compare=False)
    trigger_event: str = dataclasses.field(init=False, repr=False, compare=False)
    type_code: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = self.message_type.split(self.component_separator)
        code = parts[0].upper()
        event = parts[1].upper() if len(parts) > 1 else ""
        object.__setattr__(self, "message_code", code)
        object.__setattr__(self, "trigger_event", event)
        object.__setattr__(self, "type_code", f"{code}^{event}" if event else code)

    @property
    def component_separator(self) -> str:
        """MSH-2 component separator (``^``)."""
        return self.encoding_characters[:1] or "^"

    @property
    def enhanced_mode(self) -> bool:
        """True when MSH-15 or MSH-16 is valued (enhanced acknowledgement mode)."""
        return bool(self.accept_acknowledgment_type or self.application_acknowledgment_type)


def _is_delimiter(c: str) -> bool:
    """True for a character taken as an MSH-1 / MSH-2 delimiter: not a letter, digit, space or control character.

    Control characters (form feed, the MLLP block characters, ...) are refused: an ACK echoing them could
    not be framed or read, and a receiver would split the message where its sender did not.
    """
    return c > " " and not "\x7f" <= c <= "\x9f" and not c.isalnum()


#: HL7 table 0076 message types (v2.1-2.9): the only MSH-9.1 values written to a log as they are.
_MESSAGE_TYPES = frozenset(
    """ACK ADR ADT BAR BPS BRP BRT BTS CCF CCI CCM CCQ CCR CCU CQU CRM CSU DBC DBU DEL DFT DOC DPR DSR EAC EAN EAR
    EDR EHC ERP ESR ESU INR INU LSR LSU MCF MDM MFD MFK MFN MFQ MFR NMD NMQ NMR OMB OMD OMG OMI OML OMN OMP OMQ
    OMS OPL OPR OPU ORA ORB ORD ORF ORG ORI ORL ORM ORN ORP ORR ORS ORU ORX OSM OSQ OSR OST OSU OUL PEX PGL PIN
    PMU PPG PPP PPR PPT PPV PRR PTR QBP QCK QCN QRF QRY QSB QSX QVR RAR RAS RCI RCL RDE RDR RDS RDY REF RER RGR
    RGV ROC ROD ROR RPA RPI RPL RPR RQA RQC RQI RQP RQQ RRA RRD RRE RRG RRI RSP RTB SBK SCN SDN SDR SIU SLN SLR
    SMD SQM SQR SRM SRR SSR SSU STC STI SUR TBR TCR TCU UDM VQQ VXQ VXR VXU VXX""".split()
)
#: MSH-9.2 trigger events (table 0003) have this shape: a letter and two digits (``A08``, ``R01``).
_TRIGGER_EVENT = re.compile(r"[A-Z][0-9]{2}")
#: Well-formed types already seen (bounded; only ever values that are safe to log).
_WELL_FORMED_TYPES: set[str] = set()


def loggable_message_type(type_code: str | None) -> str:
    """``type_code`` (MSH-9.1^MSH-9.2, as :attr:`MessageHeader.type_code`) when it is a table-0076 message
    type with a table-0003-shaped event, else ``type#`` and its hash.

    MSH-9 is whatever the sender wrote there — a misaligned or hostile message can carry a patient's name in
    it — so only values that cannot be anything but a message type are written to logs as they are.

    Parameters
    ----------
    type_code:
        The message type, ``ORU^R01`` or ``ADT`` (any text), or ``None``.

    Returns
    -------
    str
        ``type_code`` itself, ``"type#"`` followed by a 12-character SHA-256 prefix, or ``"-"`` for ``None``.
    """
    if type_code is None:
        return "-"
    if type_code in _WELL_FORMED_TYPES:  # the listener's hot path: a type seen before
        return type_code
    code, _, event = type_code.partition("^")
    if code in _MESSAGE_TYPES and (not event or _TRIGGER_EVENT.fullmatch(event)):
        if len(_WELL_FORMED_TYPES) < 4096:
            _WELL_FORMED_TYPES.add(type_code)
        return type_code
    return "type#" + uid_hash(type_code)


def split_segments(data: bytes) -> list[bytes]:
    """Segments of a message (``\\r`` per the standard; ``\\n`` and ``\\r\\n`` tolerated), empty ones dropped."""
    return [s for s in _SEGMENT_SPLIT.split(data) if s.strip()]


def parse_header(data: bytes) -> MessageHeader:
    """Read the MSH segment of ``data``.

    Parameters
    ----------
    data:
        One HL7 v2 message (ER7, without MLLP framing). Leading whitespace or a byte-order mark is tolerated.

    Returns
    -------
    MessageHeader

    Raises
    ------
    Hl7HeaderError
        No MSH segment first, bad separators, or MSH-9 / MSH-10 missing (``code`` says which, per table 0357).
    """
    head = data.lstrip(b"\xef\xbb\xbf\r\n\t ")
    end = len(head)
    for sep in (b"\r", b"\n"):
        i = head.find(sep)
        if 0 <= i < end:
            end = i
    msh = head[:end]
    if not msh.startswith(b"MSH") or len(msh) < 8:
        raise Hl7HeaderError("not an HL7 v2 message: no MSH segment", code=ERR_SEGMENT_SEQUENCE)
    text = msh.decode("latin-1")
    fs = text[3]
    if not _is_delimiter(fs):
        raise Hl7HeaderError(
            "invalid field separator in MSH-1", code=ERR_SEGMENT_SEQUENCE, location="MSH^1^1"
        )
    fields = text.split(fs)
    enc = fields[1] if len(fields) > 1 else ""
    if not 2 <= len(enc) <= 5 or fs in enc or not all(_is_delimiter(c) for c in enc):
        raise Hl7HeaderError(
            "invalid encoding characters in MSH-2", code=ERR_SEGMENT_SEQUENCE, location="MSH^1^2"
        )
    if START_BLOCK in msh or END_BLOCK in msh:
        # The ACK echoes MSH fields: with a block character in them it could not be framed.
        raise Hl7HeaderError("MLLP block character in MSH", code=ERR_SEGMENT_SEQUENCE, location="MSH")

    def f(n: int) -> str:
        # fields[0] = "MSH", fields[1] = MSH-2, so MSH-n is fields[n - 1]
        return fields[n - 1].strip() if len(fields) >= n else ""

    header = MessageHeader(
        field_separator=fs,
        encoding_characters=enc,
        sending_application=f(3),
        sending_facility=f(4),
        receiving_application=f(5),
        receiving_facility=f(6),
        message_type=f(9),
        message_control_id=f(10),
        processing_id=f(11),
        version_id=f(12),
        accept_acknowledgment_type=f(15).upper(),
        application_acknowledgment_type=f(16).upper(),
        character_set=f(18),
    )
    if not header.message_code:
        raise Hl7HeaderError(
            "MSH-9 message type is empty", code=ERR_REQUIRED_FIELD_MISSING, location="MSH^1^9"
        )
    if not header.message_control_id:
        raise Hl7HeaderError(
            "MSH-10 message control id is empty", code=ERR_REQUIRED_FIELD_MISSING, location="MSH^1^10"
        )
    return header


def ack_code(header: MessageHeader | None, outcome: Outcome) -> str | None:
    """The MSA-1 code for ``outcome``, or ``None`` when MSH-15 says not to acknowledge.

    Parameters
    ----------
    header:
        The message's header; ``None`` when it had none (original mode is assumed).
    outcome:
        ``"accept"`` (stored), ``"error"`` (could not store now: retry), ``"reject"`` (never acceptable).
    """
    if header is None or not header.enhanced_mode:
        return _ORIGINAL[outcome]
    condition = header.accept_acknowledgment_type or "AL"
    if condition == "NE":
        return None
    if condition == "ER" and outcome == "accept":
        return None
    if condition == "SU" and outcome != "accept":
        return None
    return _ENHANCED[outcome]


_counter = itertools.count(1)


def _new_control_id() -> str:
    """``ACK`` + the second (``YYYYMMDDHHMMSS``) + process id + a counter."""
    return f"ACK{_utc_stamp()}{os.getpid() % 100000:05d}{next(_counter) % 1000000:06d}"


_stamp_cache: tuple[int, str] = (-1, "")


def _utc_stamp() -> str:
    """Now, UTC, as ``YYYYMMDDHHMMSS`` (formatted once per second: every ACK needs it twice)."""
    global _stamp_cache
    second = int(time.time())
    cached_second, text = _stamp_cache
    if cached_second != second:
        text = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y%m%d%H%M%S")
        _stamp_cache = (second, text)
    return text


def escape(text: str, header: MessageHeader | None = None) -> str:
    """Escape HL7 delimiters in free text (``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``)."""
    h = header or MessageHeader()
    enc = (h.encoding_characters + "^~\\&")[:4]
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in ((h.field_separator, "F"), (comp, "S"), (rep, "R"), (sub, "T")):
        out = out.replace(ch, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(
    header: MessageHeader | None,
    code: str,
    *,
    text: str | None = None,
    error_code: str | None = None,
    error_location: str | None = None,
    application: str = "ECGCAD",
    facility: str = "",
    timestamp: dt.datetime | None = None,
) -> bytes:
    """Build the ACK for a message.

    Parameters
    ----------
    header:
        The acknowledged message's header (``None`` when it had none: default delimiters, empty MSA-2).
    code:
        MSA-1: ``AA``/``AE``/``AR`` or ``CA``/``CE``/``CR``.
    text:
        MSA-3 and ERR-8 text (for errors and rejects).
    error_code:
        HL7 table 0357 code for ERR-3; default ``207`` for AE/CE and ``200`` for AR/CR.
    error_location:
        ERR-2 (``MSH^1^9``).
    application, facility:
        Our name, used for MSH-3 / MSH-4 when the message did not name us in MSH-5 / MSH-6.
    timestamp:
        MSH-7 (default: now).

    Returns
    -------
    bytes
        The ACK (segments ended by ``\\r``), Latin-1 encoded so that echoed fields are byte-for-byte.

    Raises
    ------
    ValueError
        ``code`` is not an acknowledgement code.
    """
    if code not in {"AA", "AE", "AR", "CA", "CE", "CR"}:
        raise ValueError(f"not an acknowledgement code: {code!r}")
    h = header or MessageHeader()
    fs = h.field_separator
    comp = h.component_separator
    ts = timestamp.strftime("%Y%m%d%H%M%S") if timestamp is not None else _utc_stamp()
    trigger = h.trigger_event
    msh = [
        "MSH",
        h.encoding_characters,
        h.receiving_application or application,
        h.receiving_facility or facility,
        h.sending_application,
        h.sending_facility,
        ts,
        "",
        f"ACK{comp}{trigger}{comp}ACK" if trigger else "ACK",
        _new_control_id(),
        h.processing_id or "P",
        h.version_id or "2.5.1",
    ]
    if h.character_set:
        msh += ["", "", "", "", "", h.character_set]
    segments = [fs.join(msh)]
    msa = ["MSA", code, h.message_control_id]
    is_error = code not in {"AA", "CA"}
    if is_error and text:
        msa.append(escape(text, h)[:80])
    segments.append(fs.join(msa))
    if is_error:
        err_code = error_code or (
            ERR_APPLICATION_INTERNAL_ERROR if code in {"AE", "CE"} else ERR_UNSUPPORTED_MESSAGE_TYPE
        )
        err_text = _ERROR_TEXT.get(err_code, "Error")
        severity = "E"
        err = [
            "ERR",
            "",
            error_location or "",
            f"{err_code}{comp}{err_text}{comp}HL70357",
            severity,
            "",
            "",
            "",
            escape(text or err_text, h),
        ]
        segments.append(fs.join(err))
    return ("\r".join(segments) + "\r").encode("latin-1", "replace")


# -- orders ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class OrderInfo:
    """Order and patient identifiers read tolerantly from an ORM^O01 / OMG^O19 / ADT / ORU message."""

    message_type: str = ""
    message_control_id: str = ""
    order_control: str | None = None
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    visit_number: str | None = None
    universal_service_id: str | None = None
    patient_class: str | None = None


def _component(value: str, comp: str, index: int = 0) -> str | None:
    parts = value.split(comp)
    out = parts[index].strip() if len(parts) > index else ""
    return out or None


def parse_order(data: bytes) -> OrderInfo:
    """Identifiers of an order or patient message, read tolerantly (missing segments give ``None``).

    Reads MSH-9/10, PID-3 (first repetition: ID and assigning authority, component 4 sub-component 1),
    PV1-2/-19, ORC-1/-2/-3, OBR-2/-3/-4/-18 and IPC-1 (accession, IHE). Placer/filler from ORC win over OBR.

    Raises
    ------
    Hl7HeaderError
        The message has no usable MSH segment.
    """
    header = parse_header(data)
    fs = header.field_separator
    comp = header.component_separator
    rep = header.encoding_characters[1:2] or "~"
    sub = header.encoding_characters[3:4] or "&"
    info = OrderInfo(message_type=header.type_code, message_control_id=header.message_control_id)
    segments: dict[str, list[list[str]]] = {}
    for raw in split_segments(data):
        text = raw.decode("latin-1")
        fields = text.split(fs)
        name = fields[0].strip().upper()
        # make fields[n] = SEG-n for every segment (MSH counts its separator as MSH-1)
        if name == "MSH":
            fields = [fields[0], fs, *fields[1:]]
        segments.setdefault(name, []).append(fields)

    def field(seg: str, n: int, which: int = 0) -> str:
        rows = segments.get(seg)
        if not rows or len(rows) <= which or len(rows[which]) <= n:
            return ""
        return rows[which][n]

    pid3 = field("PID", 3).split(rep)[0] if field("PID", 3) else ""
    if pid3:
        info.patient_id = _component(pid3, comp, 0)
        authority = _component(pid3, comp, 3)
        info.issuer_of_patient_id = authority.split(sub)[0] or None if authority else None
    info.patient_class = _component(field("PV1", 2), comp) if field("PV1", 2) else None
    info.visit_number = _component(field("PV1", 19), comp) if field("PV1", 19) else None
    info.order_control = _component(field("ORC", 1), comp) if field("ORC", 1) else None
    info.placer_order_number = _component(field("ORC", 2), comp) or _component(field("OBR", 2), comp)
    info.filler_order_number = _component(field("ORC", 3), comp) or _component(field("OBR", 3), comp)
    info.universal_service_id = field("OBR", 4) or None
    info.accession_number = _component(field("IPC", 1), comp) or _component(field("OBR", 18), comp)
    return info


__all__ = [
    "ERR_APPLICATION_INTERNAL_ERROR",
    "ERR_APPLICATION_RECORD_LOCKED",
    "ERR_REQUIRED_FIELD_MISSING",
    "ERR_SEGMENT_SEQUENCE",
    "ERR_UNSUPPORTED_EVENT_CODE",
    "ERR_UNSUPPORTED_MESSAGE_TYPE",
    "ERR_UNSUPPORTED_VERSION_ID",
    "Hl7HeaderError",
    "MessageHeader",
    "OrderInfo",
    "ack_code",
    "build_ack",
    "escape",
    "loggable_message_type",
    "parse_header",
    "parse_order",
    "split_segments",
]
