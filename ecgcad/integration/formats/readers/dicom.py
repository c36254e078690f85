"""DICOM waveform (12-lead / General ECG) → canonical :class:`~ecgcad.integration.formats.ecg.Ecg`.

What it does, after PS3.3 C.10.9 and the vendor files we have seen:

- accepts 12-lead ECG (``…9.1.1``), General ECG (``…9.1.2``) and General 32-bit ECG (``…9.1.4``) objects and
  refuses other waveform classes (ambulatory, hemodynamic, EP …) with :class:`UnsupportedFormatError`;
- picks the ``ORIGINAL`` multiplex group with at least 8 usable leads and the longest duration, never a
  ``DERIVED`` median beat;
- scales each channel as raw × sensitivity × correction + baseline (baseline in sensitivity units), in the
  units of ChannelSensitivityUnitsSequence, converted to mV; channels without sensitivity are refused;
- maps leads by code (CID 3001 ``MDC`` and legacy ``SCPECG``), then CodeMeaning, then ChannelLabel; −aVR
  (``2:65``) is negated; duplicate or unknown leads are a :class:`DecodeError`;
- masks WaveformPaddingValue samples as NaN and derives missing limb leads (noting it).

Explicit/Implicit VR Little Endian objects are read by :mod:`._dicomparse` straight from the input bytes
(the waveform is viewed, not copied, and written once into the float32 output); other transfer syntaxes go
through :func:`pydicom.dcmread`.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import LEADS, Ecg, EcgIdentifiers
from ecgcad.integration.formats.readers._common import (
    LEAD_INDEX,
    canonical_order,
    complete_limb_leads,
    normalise_lead_name,
    parse_hl7_ts,
    unit_to_mv,
)
from ecgcad.integration.formats.readers._dicomparse import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DatasetNode,
    Node,
    Walker,
)

logger = logging.getLogger(__name__)

#: SOP classes read as resting ECGs.
ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.4": "General 32-bit ECG Waveform Storage",
}

#: Waveform SOP classes refused on purpose (outside the intended use).
REFUSED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.2.1": "Hemodynamic Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.3.1": "Basic Cardiac Electrophysiology Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.4.1": "Basic Voice Audio Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.4.2": "General Audio Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.5.1": "Arterial Pulse Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.6.1": "Respiratory Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.6.2": "Multi-channel Respiratory Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.7.1": "Routine Scalp Electroencephalogram Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.8.1": "Electromyogram Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.9.1": "Electrooculogram Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.1.1": "12-lead ECG Waveform Storage (retired draft)",
}

# CID 3001 codes → (lead, sign, derived by the device)
_MDC: dict[str, tuple[str, float, bool]] = {
    "2:1": ("I", 1.0, False),
    "2:2": ("II", 1.0, False),
    "2:61": ("III", 1.0, False),
    "2:62": ("aVR", 1.0, False),
    "2:63": ("aVL", 1.0, False),
    "2:64": ("aVF", 1.0, False),
    "2:65": ("aVR", -1.0, False),
    **{f"2:{i + 2}": (f"V{i}", 1.0, False) for i in range(1, 7)},
    "2:31": ("I", 1.0, True),
    "2:32": ("II", 1.0, True),
    "2:111": ("III", 1.0, True),
    "2:112": ("aVR", 1.0, True),
    "2:113": ("aVL", 1.0, True),
    "2:114": ("aVF", 1.0, True),
}
_SCPECG: dict[str, tuple[str, float, bool]] = {
    "5.6.3-9-1": ("I", 1.0, False),
    "5.6.3-9-2": ("II", 1.0, False),
    "5.6.3-9-61": ("III", 1.0, False),
    "5.6.3-9-62": ("aVR", 1.0, False),
    "5.6.3-9-63": ("aVL", 1.0, False),
    "5.6.3-9-64": ("aVF", 1.0, False),
    **{f"5.6.3-9-{i + 2}": (f"V{i}", 1.0, False) for i in range(1, 7)},
}

# Leads of extended lead sets that a resting 12-lead reader may skip (with a note) rather than refuse.
_OTHER_KNOWN_LEADS = {"V7", "V8", "V9", "V3R", "V4R", "V5R", "V6R", "V7R", "X", "Y", "Z", "CM5", "CC5", "ML"}

# Tags (group << 16 | element)
_SOPClassUID = 0x00080016
_SOPInstanceUID = 0x00080018
_StudyDate = 0x00080020
_ContentDate = 0x00080023
_AcquisitionDateTime = 0x0008002A
_StudyTime = 0x00080030
_ContentTime = 0x00080033
_AccessionNumber = 0x00080050
_IssuerOfAccessionNumberSequence = 0x00080051
_Manufacturer = 0x00080070
_InstitutionName = 0x00080080
_StationName = 0x00081010
_ManufacturerModelName = 0x00081090
_PatientName = 0x00100010
_PatientID = 0x00100020
_IssuerOfPatientID = 0x00100021
_PatientBirthDate = 0x00100030
_PatientSex = 0x00100040
_PatientAge = 0x00101010
_StudyInstanceUID = 0x0020000D
_SeriesInstanceUID = 0x0020000E
_AdmissionID = 0x00380010
_LocalNamespaceEntityID = 0x00400031
_UniversalEntityID = 0x00400032
_PlacerOrderNumber = 0x00402016
_FillerOrderNumber = 0x00402017
_ReferencedRequestSequence = 0x0040A370
_WaveformSequence = 0x54000100
_MultiplexGroupTimeOffset = 0x00181068
_WaveformOriginality = 0x003A0004
_NumberOfWaveformChannels = 0x003A0005
_NumberOfWaveformSamples = 0x003A0010
_SamplingFrequency = 0x003A001A
_MultiplexGroupLabel = 0x003A0020
_ChannelDefinitionSequence = 0x003A0200
_ChannelSourceSequence = 0x003A0208
_ChannelSensitivity = 0x003A0210
_ChannelSensitivityUnitsSequence = 0x003A0211
_ChannelSensitivityCorrectionFactor = 0x003A0212
_ChannelBaseline = 0x003A0213
_ChannelLabel = 0x003A0203
_CodeValue = 0x00080100
_CodingSchemeDesignator = 0x00080102
_CodeMeaning = 0x00080104
_WaveformBitsAllocated = 0x54001004
_WaveformSampleInterpretation = 0x54001006
_WaveformPaddingValue = 0x5400100A
_WaveformData = 0x54001010
_TransferSyntaxUID = 0x00020010

_KEEP_SEQUENCES = (
    _WaveformSequence,
    _ChannelDefinitionSequence,
    _ChannelSourceSequence,
    _ChannelSensitivityUnitsSequence,
    _IssuerOfAccessionNumberSequence,
    _ReferencedRequestSequence,
)

_SAMPLE_DTYPES: dict[tuple[int, str], str] = {
    (16, "SS"): "<i2",
    (16, "US"): "<u2",
    (32, "SL"): "<i4",
    (32, "UL"): "<u4",
    (8, "SB"): "i1",
    (8, "UB"): "u1",
    (64, "SV"): "<i8",
    (64, "UV"): "<u8",
}


def looks_like_dicom(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM file (preamble + ``DICM``) or a bare Little Endian dataset."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[2:4] < b"\x00\x01":
        vr = data[4:6]
        return (vr.isalpha() and vr.isupper()) or data[:4] in (b"\x08\x00\x05\x00", b"\x08\x00\x08\x00")
    return False


@dataclass(slots=True)
class _Channel:
    column: int
    lead: str
    sign: float
    scale: float  # sensitivity × correction × unit factor (mV per count)
    offset: float  # baseline in mV
    device_derived: bool
    sensitivity: float  # ChannelSensitivity × correction factor, as the source states it (gate-checked)


@dataclass(slots=True)
class _Group:
    index: int
    node: Node
    rate: float
    n_samples: int
    n_channels: int
    channels: list[_Channel]
    notes: list[str]
    units: str | None


def read_dicom(data: bytes) -> Ecg:
    """Decode a DICOM ECG waveform object.

    Parameters
    ----------
    data:
        The DICOM Part 10 file (or a bare Little Endian dataset).

    Returns
    -------
    Ecg
        Canonical ECG with ``format="dicom"``.

    Raises
    ------
    UnsupportedFormatError
        Not a DICOM object, not an ECG, or a refused SOP class.
    DecodeError
        The waveform cannot be read (no usable group, duplicate or unknown leads, bad encoding).
    """
    root, notes = _parse(data)
    sop_class = root.text(_SOPClassUID)
    if sop_class in REFUSED_SOP_CLASSES:
        raise UnsupportedFormatError(
            f"SOP class {sop_class} ({REFUSED_SOP_CLASSES[sop_class]}) is not a resting ECG"
        )
    if sop_class is not None and sop_class not in ACCEPTED_SOP_CLASSES:
        if not root.has(_WaveformSequence):
            raise UnsupportedFormatError(f"SOP class {sop_class} is not an ECG waveform")
        raise UnsupportedFormatError(f"SOP class {sop_class} is not a supported ECG waveform class")
    groups = root.items(_WaveformSequence)
    if not groups:
        raise UnsupportedFormatError("DICOM object has no WaveformSequence")
    if sop_class is None:
        notes.append("SOP Class UID missing; read as an ECG waveform")

    group = _choose_group(groups, notes)
    signal, found, derived = _fill(group)
    notes.extend(group.notes)
    if derived:
        notes.append("limb leads derived: " + ", ".join(derived))
    return Ecg(
        signal=signal,
        sampling_rate=group.rate,
        format="dicom",
        identifiers=_identifiers(root),
        derived_leads=derived,
        source_leads=found,
        notes=notes,
        source_units=group.units,
        channel_sensitivity={c.lead: c.sensitivity for c in group.channels},
    )


def _parse(data: bytes) -> tuple[Node, list[str]]:
    notes: list[str] = []
    if len(data) >= 132 and data[128:132] == b"DICM":
        pos = 132
    elif looks_like_dicom(data):
        pos = 0
        notes.append("no DICOM preamble")
    else:
        raise UnsupportedFormatError("not a DICOM object")
    walker = Walker(data, _KEEP_SEQUENCES)
    ts: str | None = None
    if data[pos : pos + 2] == b"\x02\x00":
        meta = Walker(data, ())
        length = None
        if data[pos : pos + 4] == b"\x02\x00\x00\x00" and len(data) >= pos + 12:
            length = int.from_bytes(data[pos + 8 : pos + 12], "little")
        end = pos
        # Walk group 0002 (always explicit VR LE) element by element.
        while end + 8 <= len(data) and data[end : end + 2] == b"\x02\x00":
            tag, vr, vlen, vpos = meta._header(end, False)
            if vlen == 0xFFFFFFFF or vpos + vlen > len(data):
                raise DecodeError("DICOM file meta information is malformed")
            if tag == _TransferSyntaxUID:
                ts = data[vpos : vpos + vlen].decode("ascii", "replace").rstrip(" \x00")
            end = vpos + vlen
        if length is not None and end != pos + 12 + length:
            notes.append("file meta group length disagrees with its content")
        pos = end
    if ts is None:
        vr = data[pos + 4 : pos + 6]
        ts = EXPLICIT_VR_LITTLE_ENDIAN if vr.isalpha() and vr.isupper() else IMPLICIT_VR_LITTLE_ENDIAN
        notes.append("no transfer syntax; guessed from the data")
    if ts in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
        try:
            return walker.read(pos, implicit=ts == IMPLICIT_VR_LITTLE_ENDIAN), notes
        except DecodeError as exc:
            # Tolerate what pydicom tolerates (e.g. VR mismatches) before giving up.
            logger.debug("fast DICOM walk failed (%s); trying pydicom", exc)
            notes.append("read with the general DICOM parser")
    return _parse_pydicom(data), notes


def _parse_pydicom(data: bytes) -> Node:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            for _elem in ds.iterall():  # pydicom reads lazily: force every value now, inside the guard
                pass
    except (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, OSError, EOFError) as exc:
        raise DecodeError(f"DICOM object cannot be parsed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on garbage; report as decode error
        raise DecodeError(f"DICOM object cannot be parsed: {type(exc).__name__}") from exc
    return DatasetNode(ds)


def _lead_of(ch: Node) -> tuple[str, float, bool] | None:
    """Lead of a channel by code, then CodeMeaning, then ChannelLabel; ``None`` for known non-12-lead."""
    sources = ch.items(_ChannelSourceSequence)
    meaning = label = None
    if sources:
        src = sources[0]
        value = (src.text(_CodeValue) or "").strip()
        scheme = (src.text(_CodingSchemeDesignator) or "").strip().upper()
        if scheme == "MDC" or (not scheme and value.startswith("2:")):
            if value in _MDC:
                return _MDC[value]
        elif scheme.startswith("SCPECG") or (not scheme and value.startswith("5.6.3-9-")):
            if value in _SCPECG:
                return _SCPECG[value]
        meaning = src.text(_CodeMeaning)
    label = ch.text(_ChannelLabel)
    for text in (meaning, label):
        if text:
            hit = normalise_lead_name(text)
            if hit is not None:
                return hit[0], hit[1], False
    for text in (meaning, label):
        if text and text.strip().upper().replace("LEAD", "").strip() in _OTHER_KNOWN_LEADS:
            return None
    raise DecodeError(
        "unknown lead in channel " + repr((sources[0].text(_CodeValue) if sources else None, meaning, label))
    )


def _group(index: int, node: Node) -> _Group:
    notes: list[str] = []
    rate = node.number(_SamplingFrequency)
    n_samples = node.uint(_NumberOfWaveformSamples, 4)
    n_channels = node.uint(_NumberOfWaveformChannels, 2)
    chans = node.items(_ChannelDefinitionSequence)
    if not rate or rate <= 0:
        raise DecodeError(f"waveform group {index} has no sampling frequency")
    if n_channels is None or n_channels != len(chans):
        if n_channels is not None:
            notes.append(f"NumberOfWaveformChannels {n_channels} disagrees with {len(chans)} channel items")
        n_channels = len(chans)
    if n_samples is None:
        raise DecodeError(f"waveform group {index} has no NumberOfWaveformSamples")
    channels: list[_Channel] = []
    seen: dict[str, int] = {}
    units_seen: set[str] = set()
    for col, ch in enumerate(chans):
        lead = _lead_of(ch)
        if lead is None:
            notes.append(f"channel {col + 1} is not a 12-lead ECG lead; skipped")
            continue
        name, sign, device_derived = lead
        if name in seen:
            raise DecodeError(f"lead {name} appears twice in waveform group {index}")
        seen[name] = col
        sensitivity = ch.number(_ChannelSensitivity)
        if sensitivity is None or sensitivity == 0:
            notes.append(f"lead {name} has no channel sensitivity; refused")
            continue
        correction = ch.number(_ChannelSensitivityCorrectionFactor)
        if correction is None:
            correction = 1.0
        baseline = ch.number(_ChannelBaseline) or 0.0
        unit_items = ch.items(_ChannelSensitivityUnitsSequence)
        unit = unit_items[0].text(_CodeValue) if unit_items else None
        if unit is None:
            notes.append(f"lead {name} has no sensitivity units; assumed uV")
            unit = "uV"
        units_seen.add(unit)
        factor = unit_to_mv(unit)
        channels.append(
            _Channel(
                col,
                name,
                sign,
                sign * sensitivity * correction * factor,
                sign * baseline * factor,
                device_derived,
                sensitivity * correction,
            )
        )
    units = ",".join(sorted(units_seen)) if units_seen else None
    return _Group(index, node, float(rate), int(n_samples), int(n_channels), channels, notes, units)


def _choose_group(groups: list[Node], notes: list[str]) -> _Group:
    candidates: list[_Group] = []
    errors: list[DecodeError] = []
    derived_only = True
    for i, g in enumerate(groups):
        originality = (g.text(_WaveformOriginality) or "").strip().upper()
        if originality == "DERIVED":
            continue
        derived_only = False
        try:
            grp = _group(i, g)
        except DecodeError as exc:
            errors.append(exc)
            continue
        if originality != "ORIGINAL":
            grp.notes.append(f"waveform group {i} has WaveformOriginality {originality or '(empty)'}")
        candidates.append(grp)
    if not candidates:
        if errors:
            raise errors[0]
        if derived_only:
            raise DecodeError("only DERIVED (median beat) waveform groups; no rhythm to read")
        raise DecodeError("no usable waveform group")
    full = [c for c in candidates if len(c.channels) >= 8]
    pool = full or candidates
    best = max(pool, key=lambda c: (c.n_samples / c.rate, len(c.channels)))
    if len(groups) > 1:
        notes.append(f"waveform group {best.index} of {len(groups)} used")
    return best


def _fill(group: _Group) -> tuple[np.ndarray, list[str], list[str]]:
    node = group.node
    bits = node.uint(_WaveformBitsAllocated, 2) or 16
    interp = (node.text(_WaveformSampleInterpretation) or "SS").strip().upper()
    dtype = _SAMPLE_DTYPES.get((bits, interp))
    if dtype is None:
        raise DecodeError(f"waveform sample format {bits}-bit {interp} is not supported")
    raw_ref = node.raw(_WaveformData)
    if raw_ref is None:
        raise DecodeError("waveform group has no WaveformData")
    buf, offset, length = raw_ref
    itemsize = np.dtype(dtype).itemsize
    frame = itemsize * group.n_channels
    if frame == 0:
        raise DecodeError("waveform group has no channels")
    n = min(group.n_samples, length // frame)
    if n < group.n_samples:
        group.notes.append(f"WaveformData holds {n} of {group.n_samples} samples")
    if n == 0:
        raise DecodeError("waveform group has no samples")
    # A view on the input bytes: no copy until the single scaled write below.
    raw = np.frombuffer(buf, dtype=dtype, count=n * group.n_channels, offset=offset).reshape(
        n, group.n_channels
    )

    pad = None
    pad_ref = node.raw(_WaveformPaddingValue)
    if pad_ref is not None and pad_ref[2] >= itemsize:
        pad = np.frombuffer(pad_ref[0], dtype=dtype, count=1, offset=pad_ref[1])[0]

    present = {c.lead for c in group.channels}
    signal = np.empty((len(LEADS), n), dtype=np.float32)
    for row, name in enumerate(LEADS):
        if name not in present:
            signal[row] = np.nan
    masked = 0
    for c in group.channels:
        out = signal[LEAD_INDEX[c.lead]]
        col = raw[:, c.column]
        # A corrupt scale may overflow float32: the samples become infinite and the gate refuses them.
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(col, np.float32(c.scale), out=out, dtype=np.float32, casting="unsafe")
            if c.offset:
                out += np.float32(c.offset)
        if pad is not None:
            mask = col == pad
            if mask.any():
                out[mask] = np.nan
                masked += int(mask.sum())
    if masked:
        group.notes.append(f"{masked} padding samples masked")
    by_device = [c.lead for c in group.channels if c.device_derived]
    if by_device:
        group.notes.append("leads coded as derived by the device: " + ", ".join(canonical_order(by_device)))
    with np.errstate(over="ignore", invalid="ignore"):  # infinite samples stay for the gate to refuse
        derived = complete_limb_leads(signal, present)
    return signal, canonical_order(present), derived


def _identifiers(root: Node) -> EcgIdentifiers:
    issuer_acc = None
    acc_items = root.items(_IssuerOfAccessionNumberSequence)
    if acc_items:
        issuer_acc = acc_items[0].text(_LocalNamespaceEntityID) or acc_items[0].text(_UniversalEntityID)
    placer = root.text(_PlacerOrderNumber)
    filler = root.text(_FillerOrderNumber)
    for item in root.items(_ReferencedRequestSequence):
        placer = placer or item.text(_PlacerOrderNumber)
        filler = filler or item.text(_FillerOrderNumber)
    acquired = parse_hl7_ts(root.text(_AcquisitionDateTime))
    if acquired is None:
        for date_tag, time_tag in ((_ContentDate, _ContentTime), (_StudyDate, _StudyTime)):
            date = root.text(date_tag)
            if date:
                acquired = parse_hl7_ts(date + (root.text(time_tag) or "").replace(":", ""))
                if acquired is not None:
                    break
    model = root.text(_ManufacturerModelName)
    station = root.text(_StationName)
    return EcgIdentifiers(
        patient_id=root.text(_PatientID),
        issuer_of_patient_id=root.text(_IssuerOfPatientID),
        patient_name=root.text(_PatientName),
        patient_birth_date=root.text(_PatientBirthDate),
        patient_sex=root.text(_PatientSex),
        patient_age=root.text(_PatientAge),
        accession_number=root.text(_AccessionNumber),
        issuer_of_accession_number=issuer_acc,
        study_instance_uid=root.text(_StudyInstanceUID),
        series_instance_uid=root.text(_SeriesInstanceUID),
        sop_instance_uid=root.text(_SOPInstanceUID),
        sop_class_uid=root.text(_SOPClassUID),
        placer_order_number=placer,
        filler_order_number=filler,
        acquisition_datetime=acquired,
        device=model or station,
        manufacturer=root.text(_Manufacturer),
        institution_name=root.text(_InstitutionName),
        visit_number=root.text(_AdmissionID),
    )
