"""GE MUSE ``RestingECG`` XML (MUSE 8/9 and NX exports) → canonical :class:`~ecgcad.integration.formats.ecg.Ecg`.

The rhythm ``Waveform`` carries one ``LeadData`` per lead: Base64 of little-endian signed 16-bit samples,
``LeadAmplitudeUnitsPerBit`` (usually 4.88) in ``LeadAmplitudeUnits`` (usually ``MICROVOLTS``) and the
rate ``SampleBase`` × 10^``SampleExponent``. MUSE stores 8 leads (I, II, V1–V6); the other four are derived.

Tolerated dialects (each noted): UTF-16 or ISO-8859-1 documents, DOCTYPE lines, Base64 with line breaks,
decimal commas, lower-case waveform types, missing units (µV assumed), missing units-per-bit (4.88 assumed),
leads of unequal length (trimmed to the shortest).
"""

from __future__ import annotations

import datetime as dt
import re
from xml.etree.ElementTree import Element

import numpy as np

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import LEADS, Ecg, EcgIdentifiers
from ecgcad.integration.formats.readers._common import (
    LEAD_INDEX,
    b64decode_tolerant,
    canonical_order,
    complete_limb_leads,
    normalise_lead_name,
    parse_number,
    unit_to_mv,
)
from ecgcad.integration.formats.readers._xml import children, local, parse_xml, path, text

_AGE_UNITS = {"YEARS": "Y", "MONTHS": "M", "WEEKS": "W", "DAYS": "D"}
_SEX = {"MALE": "M", "FEMALE": "F", "M": "M", "F": "F", "UNKNOWN": "O", "OTHER": "O"}
_DEFAULT_UNITS_PER_BIT = 4.88


def read_muse(data: bytes) -> Ecg:
    """Decode a GE MUSE ``RestingECG`` XML document.

    Parameters
    ----------
    data:
        The XML document.

    Returns
    -------
    Ecg
        Canonical ECG with ``format="muse"``.

    Raises
    ------
    UnsupportedFormatError
        The root element is not ``RestingECG``.
    DecodeError
        No rhythm waveform, bad Base64, unknown or duplicate leads, or unsafe XML.
    """
    root = parse_xml(data)
    if local(root.tag) != "RestingECG":
        raise UnsupportedFormatError(f"XML root is {local(root.tag)!r}, not RestingECG")
    notes: list[str] = []
    version = text(path(root, "MuseInfo"), "MuseVersion")
    if version:
        notes.append(f"MUSE version {version}")
    waveform = _rhythm(root)
    base = parse_number(text(waveform, "SampleBase"))
    exponent = parse_number(text(waveform, "SampleExponent")) or 0.0
    if not base or base <= 0:
        raise DecodeError("MUSE rhythm waveform has no SampleBase")
    rate = base * 10.0**exponent

    leads: dict[str, np.ndarray] = {}
    units_seen: set[str] = set()
    for lead_el in children(waveform, "LeadData"):
        lead_id = text(lead_el, "LeadID")
        if lead_id is None:
            raise DecodeError("MUSE LeadData without LeadID")
        hit = normalise_lead_name(lead_id)
        if hit is None:
            raise DecodeError(f"unknown MUSE lead {lead_id!r}")
        name, sign = hit
        if name in leads:
            raise DecodeError(f"lead {name} appears twice in the MUSE rhythm waveform")
        payload = text(lead_el, "WaveFormData")
        if payload is None:
            raise DecodeError(f"MUSE lead {lead_id} has no WaveFormData")
        raw = b64decode_tolerant(payload)
        size = int(parse_number(text(lead_el, "LeadSampleSize")) or 2)
        if size != 2:
            raise DecodeError(f"MUSE lead sample size {size} is not supported")
        samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2")
        declared = parse_number(text(lead_el, "LeadSampleCountTotal"))
        if declared is not None and int(declared) != samples.size:
            notes.append(f"lead {name}: {samples.size} samples, {int(declared)} declared")
            samples = samples[: int(declared)]
        per_bit = parse_number(text(lead_el, "LeadAmplitudeUnitsPerBit"))
        if per_bit is None:
            per_bit = _DEFAULT_UNITS_PER_BIT
            notes.append(f"lead {name}: no LeadAmplitudeUnitsPerBit; {per_bit} assumed")
        unit = text(lead_el, "LeadAmplitudeUnits")
        if unit is None:
            notes.append(f"lead {name}: no LeadAmplitudeUnits; MICROVOLTS assumed")
            unit = "MICROVOLTS"
        units_seen.add(unit)
        baseline = parse_number(text(lead_el, "FirstSampleBaseline")) or 0.0
        factor = np.float32(sign * per_bit * unit_to_mv(unit))
        lead = samples.astype(np.float32) * factor
        if baseline:
            lead += np.float32(sign * baseline * per_bit * unit_to_mv(unit))
        leads[name] = lead
    if not leads:
        raise DecodeError("MUSE rhythm waveform has no leads")
    n = min(v.size for v in leads.values())
    if any(v.size != n for v in leads.values()):
        notes.append(f"leads of unequal length trimmed to {n} samples")
    if n == 0:
        raise DecodeError("MUSE rhythm waveform has no samples")
    signal = np.full((len(LEADS), n), np.nan, dtype=np.float32)
    for name, values in leads.items():
        signal[LEAD_INDEX[name]] = values[:n]
    derived = complete_limb_leads(signal, set(leads))
    if derived:
        notes.append("limb leads derived: " + ", ".join(derived))
    return Ecg(
        signal=signal,
        sampling_rate=float(rate),
        format="muse",
        identifiers=_identifiers(root),
        derived_leads=derived,
        source_leads=canonical_order(set(leads)),
        notes=notes,
        source_units=",".join(sorted(units_seen)),
    )


def _rhythm(root: Element) -> Element:
    waveforms = list(children(root, "Waveform"))
    for w in waveforms:
        if (text(w, "WaveformType") or "").strip().lower() == "rhythm":
            return w
    if waveforms:
        raise DecodeError("MUSE document has only median-beat waveforms; no rhythm to read")
    raise DecodeError("MUSE document has no Waveform")


def _muse_date(value: str | None) -> dt.date | None:
    if not value:
        return None
    m = re.match(r"^\s*(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})", value)
    try:
        if m:
            return dt.date(int(m.group(3)), int(m.group(1)), int(m.group(2)))
        m = re.match(r"^\s*(\d{4})-?(\d{2})-?(\d{2})", value)
        if m:
            return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None
    return None


def _identifiers(root: Element) -> EcgIdentifiers:
    patient = path(root, "PatientDemographics")
    test = path(root, "TestDemographics")
    order = path(root, "Order")
    age = text(patient, "PatientAge")
    units = (text(patient, "AgeUnits") or "YEARS").strip().upper()
    patient_age = None
    if age is not None and age.isdigit() and units in _AGE_UNITS:
        patient_age = f"{int(age):03d}{_AGE_UNITS[units]}"
    birth = _muse_date(text(patient, "DateofBirth"))
    last, first = text(patient, "PatientLastName"), text(patient, "PatientFirstName")
    name = "^".join(p for p in (last or "", first or "")).rstrip("^") or None
    acquired = None
    date = _muse_date(text(test, "AcquisitionDate"))
    if date is not None:
        clock = re.match(r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?", text(test, "AcquisitionTime") or "")
        try:
            acquired = dt.datetime(
                date.year,
                date.month,
                date.day,
                int(clock.group(1)) if clock else 0,
                int(clock.group(2)) if clock else 0,
                int(clock.group(3) or 0) if clock else 0,
            )
        except ValueError:
            acquired = None
    sex = text(patient, "Gender")
    return EcgIdentifiers(
        patient_id=text(patient, "PatientID"),
        patient_name=name,
        patient_birth_date=birth.strftime("%Y%m%d") if birth else None,
        patient_sex=_SEX.get(sex.upper(), None) if sex else None,
        patient_age=patient_age,
        accession_number=text(order, "AccessionNumber") or text(test, "AccessionNumber"),
        placer_order_number=text(order, "PlacerOrderNumber") or text(order, "OrderNumber"),
        filler_order_number=text(order, "FillerOrderNumber"),
        acquisition_datetime=acquired,
        device=text(test, "AcquisitionDevice"),
        manufacturer="GE Healthcare",
        institution_name=text(test, "SiteName"),
        visit_number=text(order, "VisitNumber") or text(test, "VisitNumber"),
    )
