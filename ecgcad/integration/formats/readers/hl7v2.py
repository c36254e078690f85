"""HL7 v2 ORU with an embedded ECG → canonical :class:`~ecgcad.integration.formats.ecg.Ecg`.

Two carriers are read:

- an OBX of type ``ED`` (``source^type^subtype^encoding^data``) whose data — Base64, hex or plain text — is
  a DICOM ECG, a MUSE XML or an aECG XML, recognised by content (the declared subtype is only noted);
- Chapter 7 waveform OBX: ``CD`` channel definitions (``CHN``), a ``TS`` start time (``TIM``) and the
  samples (``WAV``) as ``MA`` (multiplexed: samples separated by ``~``, channels by ``^``) or ``NA`` (one
  OBX per channel, values separated by ``^``); value = raw × sensitivity × correction + baseline.

The message is parsed with our own tolerant splitter (separators from MSH-1/MSH-2, segments ended by CR,
LF or CRLF, MLLP framing removed); hl7apy's strict mode rejects real vendor messages. Identifiers come
from PID / PV1 / ORC / OBR / IPC and win over the embedded object's, whose values only fill the gaps.
"""

from __future__ import annotations

import binascii
import dataclasses
import re
from collections.abc import Callable

import numpy as np

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import LEADS, Ecg, EcgIdentifiers
from ecgcad.integration.formats.readers._common import (
    LEAD_INDEX,
    b64decode_tolerant,
    canonical_order,
    complete_limb_leads,
    normalise_lead_name,
    parse_hl7_ts,
    parse_number,
    unit_to_mv,
)
from ecgcad.integration.transport.mllp import unframe


def looks_like_hl7(data: bytes) -> bool:
    """Whether ``data`` starts like an HL7 v2 message (optionally MLLP-framed)."""
    head = data[:64].lstrip(b"\x0b \t\r\n\xef\xbb\xbf")
    return head.startswith(b"MSH") and len(head) >= 8


@dataclasses.dataclass(slots=True)
class Segment:
    """One segment: ``fields[n]`` is SEG-n (for MSH, ``fields[1]`` is the field separator)."""

    name: str
    fields: list[str]

    def field(self, n: int) -> str:
        """SEG-n as raw text ('' when absent)."""
        return self.fields[n] if n < len(self.fields) else ""


@dataclasses.dataclass(slots=True)
class Message:
    """A tolerantly split HL7 v2 message."""

    segments: list[Segment]
    field_sep: str
    component_sep: str
    repetition_sep: str
    escape: str
    subcomponent_sep: str

    def first(self, name: str) -> Segment | None:
        """The first segment called ``name``."""
        return next((s for s in self.segments if s.name == name), None)

    def unescape(self, value: str) -> str:
        """Resolve HL7 escape sequences (``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``, ``\\Xhh\\``)."""
        esc = self.escape
        if not esc or esc not in value:
            return value
        table = {
            "F": self.field_sep,
            "S": self.component_sep,
            "T": self.subcomponent_sep,
            "R": self.repetition_sep,
            "E": esc,
            ".br": "\r",
        }

        def sub(m: re.Match[str]) -> str:
            body = m.group(1)
            if body in table:
                return table[body]
            if body.startswith("X"):
                try:
                    return bytes.fromhex(body[1:]).decode("latin-1")
                except ValueError:
                    return m.group(0)
            return m.group(0)

        return re.sub(re.escape(esc) + r"(.*?)" + re.escape(esc), sub, value)

    def component(self, value: str, n: int) -> str:
        """Component ``n`` (1-based) of the first repetition of ``value``, unescaped."""
        rep = value.split(self.repetition_sep)[0] if self.repetition_sep else value
        parts = rep.split(self.component_sep)
        return self.unescape(parts[n - 1]) if n <= len(parts) else ""


def parse_message(data: bytes) -> Message:
    """Split an HL7 v2 message into segments and fields.

    Raises
    ------
    UnsupportedFormatError
        The data does not start with an MSH segment.
    DecodeError
        The MSH segment is too short to carry its separators.
    """
    body = unframe(data).lstrip(b" \t\r\n\xef\xbb\xbf")
    if not body.startswith(b"MSH"):
        raise UnsupportedFormatError("not an HL7 v2 message (no MSH segment)")
    if len(body) < 8:
        raise DecodeError("HL7 MSH segment too short")
    text = body.decode("latin-1")
    first_line = re.split(r"[\r\n]", text, maxsplit=1)[0]
    fs = text[3]
    msh_fields = first_line.split(fs)
    charset = msh_fields[17] if len(msh_fields) > 17 else ""
    if "UTF" in charset.upper() or "UNICODE" in charset.upper():
        text = body.decode("utf-8", "replace")
    declared = msh_fields[1][:4] if len(msh_fields) > 1 else ""
    enc = declared + "^~\\&"[len(declared) :]
    comp, rep, esc, sub = enc[0], enc[1], enc[2], enc[3]
    if len({fs, comp, rep, esc, sub}) < 5 or fs.isalnum():
        raise DecodeError("HL7 MSH-1/MSH-2 separators are invalid")
    segments: list[Segment] = []
    for line in re.split(r"\r\n|\r|\n", text):
        line = line.strip("\x1c\x0b")
        if not line.strip():
            continue
        name = line[:3]
        if name == "MSH":
            fields = ["MSH", fs, *line[4:].split(fs)]
        else:
            fields = line.split(fs)
        segments.append(Segment(name, fields))
    return Message(segments, fs, comp, rep, esc, sub)


def read_hl7v2(data: bytes, decode_embedded: Callable[[bytes], Ecg]) -> Ecg:
    """Decode an HL7 v2 result message that carries an ECG.

    Parameters
    ----------
    data:
        One HL7 v2 message, with or without MLLP framing.
    decode_embedded:
        Decoder for an ED payload (detects DICOM / MUSE / aECG by content).

    Returns
    -------
    Ecg
        Canonical ECG with ``format="hl7v2"``; the embedded format is in the notes.

    Raises
    ------
    UnsupportedFormatError
        Not an HL7 v2 message.
    DecodeError
        The message carries no readable ECG.
    """
    msg = parse_message(data)
    msh = msg.segments[0]
    notes: list[str] = []
    msg_type = msg.component(msh.field(9), 1) + "^" + msg.component(msh.field(9), 2)
    if msg_type.rstrip("^") not in ("ORU^R01", "ORU"):
        notes.append(f"message type {msg_type.rstrip('^') or '(empty)'} read as a result message")
    obx = [s for s in msg.segments if s.name == "OBX"]
    ed = [s for s in obx if msg.component(s.field(2), 1).upper() == "ED"]
    ecg: Ecg | None = None
    first_error: DecodeError | None = None
    for seg in ed:
        try:
            ecg = _from_ed(msg, seg, decode_embedded, notes)
            break
        except DecodeError as exc:
            first_error = first_error or exc
    if ecg is None:
        wave = [s for s in obx if msg.component(s.field(2), 1).upper() in ("CD", "NA", "MA")]
        if wave:
            ecg = _from_waveform(msg, obx, notes)
        elif first_error is not None:
            raise first_error
        else:
            raise DecodeError("HL7 message carries no ECG (no OBX of type ED, CD/NA or CD/MA)")
    ecg.identifiers = _merge(_identifiers(msg), ecg.identifiers, notes)
    ecg.notes = notes + ecg.notes
    ecg.format = "hl7v2"
    return ecg


def _from_ed(msg: Message, seg: Segment, decode_embedded: Callable[[bytes], Ecg], notes: list[str]) -> Ecg:
    value = seg.field(5)
    reps = value.split(msg.repetition_sep) if msg.repetition_sep else [value]
    parts = reps[0].split(msg.component_sep)
    if len(parts) >= 5:
        subtype, encoding = parts[2], parts[3].strip().upper()
        payload = msg.component_sep.join(parts[4:])
        # Some senders split long data over repetitions: join their data components.
        for extra in reps[1:]:
            bits = extra.split(msg.component_sep)
            payload += bits[4] if len(bits) >= 5 else extra
    else:
        subtype, encoding, payload = "", "BASE64", parts[-1]
        notes.append("ED value without source/type/subtype/encoding components")
    payload = msg.unescape(payload)
    if encoding in ("BASE64", "B64", ""):
        raw = b64decode_tolerant(payload)
    elif encoding == "HEX":
        try:
            raw = binascii.unhexlify(re.sub(r"\s+", "", payload))
        except (binascii.Error, ValueError) as exc:
            raise DecodeError("ED data is not hexadecimal") from exc
    elif encoding == "A":
        raw = payload.replace("\r", "\n").encode("utf-8")
    else:
        raise DecodeError(f"ED encoding {encoding!r} is not supported")
    inner = decode_embedded(raw)
    declared = subtype.strip().lower()
    if declared and inner.format not in declared and not (inner.format == "muse" and "xml" in declared):
        notes.append(f"ED subtype {subtype!r} but the data is {inner.format}")
    notes.append(f"embedded {inner.format} ECG in OBX of type ED")
    return inner


@dataclasses.dataclass(slots=True)
class _WaveChannel:
    lead: str
    sign: float
    scale: float
    offset: float
    rate: float | None
    unit: str
    sensitivity: float  # CD-3 sensitivity × CD-4 correction, as the message states it (gate-checked)


def _from_waveform(msg: Message, obx: list[Segment], notes: list[str]) -> Ecg:
    comp, sub = msg.component_sep, msg.subcomponent_sep
    channels: list[_WaveChannel] = []
    arrays: list[np.ndarray] = []
    multiplexed: np.ndarray | None = None
    group = None
    for seg in obx:
        kind = msg.component(seg.field(2), 1).upper()
        sub_id = seg.field(4)
        if kind in ("CD", "NA", "MA"):
            if group is None:
                group = sub_id
            elif sub_id != group:
                continue
        if kind == "CD":
            parts = seg.field(5).split(comp)
            ident = parts[0].split(sub) if parts else []
            source = msg.unescape(parts[1]) if len(parts) > 1 else ""
            label = msg.unescape(ident[1]) if len(ident) > 1 else source
            hit = normalise_lead_name(label) or normalise_lead_name(source)
            if hit is None:
                raise DecodeError(f"unknown waveform channel {label or source!r}")
            if any(c.lead == hit[0] for c in channels):
                raise DecodeError(f"lead {hit[0]} appears twice in the waveform channels")
            csu = parts[2].split(sub) if len(parts) > 2 else []
            sensitivity = parse_number(csu[0]) if csu else None
            if not sensitivity:
                raise DecodeError(f"waveform channel {hit[0]} has no sensitivity")
            unit = msg.unescape(csu[1]) if len(csu) > 1 and csu[1] else ""
            if not unit:
                notes.append(f"waveform channel {hit[0]} has no units; uV assumed")
                unit = "uV"
            ccp = parts[3].split(sub) if len(parts) > 3 else []
            correction = parse_number(ccp[0]) if ccp and ccp[0] else 1.0
            baseline = parse_number(ccp[1]) if len(ccp) > 1 and ccp[1] else 0.0
            rate = parse_number(parts[4]) if len(parts) > 4 and parts[4] else None
            factor = unit_to_mv(unit)
            s = hit[1]
            channels.append(
                _WaveChannel(
                    hit[0],
                    s,
                    s * sensitivity * (correction or 1.0) * factor,
                    s * (baseline or 0.0) * factor,
                    rate,
                    unit,
                    sensitivity * (correction or 1.0),
                )
            )
        elif kind == "MA":
            value = seg.field(5)
            flat = _numbers(value.replace(msg.repetition_sep, comp).split(comp))
            multiplexed = flat if multiplexed is None else np.concatenate([multiplexed, flat])
        elif kind == "NA":
            arrays.append(_numbers(seg.field(5).split(comp)))
    if not channels:
        raise DecodeError("HL7 waveform has no channel definitions (CD)")
    rates = {c.rate for c in channels if c.rate}
    if len(rates) != 1:
        raise DecodeError("HL7 waveform channels have no single sampling frequency")
    rate = rates.pop()
    nch = len(channels)
    if multiplexed is not None:
        if multiplexed.size % nch:
            notes.append("multiplexed waveform ends with a partial sample; dropped")
        n = multiplexed.size // nch
        samples = multiplexed[: n * nch].reshape(n, nch).T
        notes.append("chapter 7 waveform (MA)")
    elif arrays:
        if len(arrays) != nch:
            raise DecodeError(f"{len(arrays)} NA waveform arrays for {nch} channels")
        n = min(a.size for a in arrays)
        samples = np.stack([a[:n] for a in arrays])
        notes.append("chapter 7 waveform (NA)")
    else:
        raise DecodeError("HL7 waveform has channel definitions but no NA/MA data")
    if n == 0:
        raise DecodeError("HL7 waveform has no samples")
    signal = np.full((len(LEADS), n), np.nan, dtype=np.float32)
    # Samples that overflow float32 (e.g. 1e308) become infinite: the gate refuses them, coded.
    with np.errstate(over="ignore", invalid="ignore"):
        for i, c in enumerate(channels):
            signal[LEAD_INDEX[c.lead]] = samples[i] * c.scale + c.offset
        present = {c.lead for c in channels}
        derived = complete_limb_leads(signal, present)
    if derived:
        notes.append("limb leads derived: " + ", ".join(derived))
    return Ecg(
        signal=signal,
        sampling_rate=float(rate),
        format="hl7v2",
        derived_leads=derived,
        source_leads=canonical_order(present),
        notes=[],
        source_units=",".join(sorted({c.unit for c in channels})),
        channel_sensitivity={c.lead: c.sensitivity for c in channels},
    )


def _numbers(tokens: list[str]) -> np.ndarray:
    try:
        return np.array(tokens, dtype=np.float64)
    except ValueError:
        out = np.empty(len(tokens), dtype=np.float64)
        for i, t in enumerate(tokens):
            t = t.strip()
            if not t:
                out[i] = np.nan
                continue
            try:
                out[i] = float(t)
            except ValueError as exc:
                raise DecodeError(f"waveform value {t[:20]!r} is not a number") from exc
        return out


def _identifiers(msg: Message) -> EcgIdentifiers:
    pid, pv1 = msg.first("PID"), msg.first("PV1")
    orc, obr, ipc, msh = msg.first("ORC"), msg.first("OBR"), msg.first("IPC"), msg.first("MSH")
    ids = EcgIdentifiers()
    if pid is not None:
        for rep in pid.field(3).split(msg.repetition_sep):
            parts = rep.split(msg.component_sep)
            if parts and parts[0]:
                ids.patient_id = msg.unescape(parts[0])
                if len(parts) > 3 and parts[3]:
                    hd = parts[3].split(msg.subcomponent_sep)
                    ids.issuer_of_patient_id = msg.unescape(hd[0] or (hd[1] if len(hd) > 1 else "")) or None
                break
        name = pid.field(5).split(msg.repetition_sep)[0]
        ids.patient_name = msg.unescape(name).rstrip(msg.component_sep) or None
        ids.patient_birth_date = msg.component(pid.field(7), 1)[:8] or None
        ids.patient_sex = msg.component(pid.field(8), 1) or None
        ids.visit_number = msg.component(pid.field(18), 1) or None
    if pv1 is not None and msg.component(pv1.field(19), 1):
        ids.visit_number = msg.component(pv1.field(19), 1)
    for seg in (orc, obr):
        if seg is None:
            continue
        ids.placer_order_number = ids.placer_order_number or msg.component(seg.field(2), 1) or None
        ids.filler_order_number = ids.filler_order_number or msg.component(seg.field(3), 1) or None
    if ipc is not None:
        ids.accession_number = msg.component(ipc.field(1), 1) or None
        ids.issuer_of_accession_number = msg.component(ipc.field(1), 2) or None
        ids.study_instance_uid = msg.component(ipc.field(3), 1) or None
    if obr is not None:
        ids.accession_number = ids.accession_number or msg.component(obr.field(18), 1) or None
        ids.acquisition_datetime = parse_hl7_ts(msg.component(obr.field(7), 1))
    zds = msg.first("ZDS")
    if zds is not None and not ids.study_instance_uid:
        ids.study_instance_uid = msg.component(zds.field(1), 1) or None
    if ids.acquisition_datetime is None and msh is not None:
        ids.acquisition_datetime = parse_hl7_ts(msg.component(msh.field(7), 1))
    return ids


def _merge(hl7: EcgIdentifiers, inner: EcgIdentifiers, notes: list[str]) -> EcgIdentifiers:
    """HL7 values win; the embedded object's fill the gaps (a disagreement is noted, without values)."""
    out = EcgIdentifiers()
    for f in dataclasses.fields(EcgIdentifiers):
        a, b = getattr(hl7, f.name), getattr(inner, f.name)
        if (
            a is not None
            and b is not None
            and a != b
            and f.name in ("patient_id", "accession_number", "study_instance_uid")
        ):
            notes.append(f"{f.name} differs between the HL7 message and the embedded ECG; HL7 value kept")
        setattr(out, f.name, a if a is not None else b)
    return out
