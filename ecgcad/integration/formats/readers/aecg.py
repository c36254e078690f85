"""HL7 v3 annotated ECG (aECG) XML → canonical :class:`~ecgcad.integration.formats.ecg.Ecg`.

The rhythm ``series`` holds a ``sequenceSet``: one ``TIME_ABSOLUTE`` (or ``TIME_RELATIVE``) sequence whose
``GLIST_TS`` / ``GLIST_PQ`` ``increment`` is the sample interval, and one ``SLIST_PQ`` sequence per lead
coded ``MDC_ECG_LEAD_*`` (code system 2.16.840.1.113883.6.24); physical value = origin + scale × digit, in
the unit of ``scale``. Derived series (median / representative beats) are never read.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

import numpy as np

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import LEADS, Ecg, EcgIdentifiers
from ecgcad.integration.formats.readers._common import (
    LEAD_INDEX,
    canonical_order,
    complete_limb_leads,
    normalise_lead_name,
    parse_hl7_ts,
    parse_number,
    unit_to_mv,
)
from ecgcad.integration.formats.readers._xml import child, children, local, parse_xml, path, text

_TIME_CODES = {"TIME_ABSOLUTE", "TIME_RELATIVE"}
_DERIVED_SERIES = {"REPRESENTATIVE_BEAT", "MEDIAN", "MEDIAN_BEAT", "AVERAGE_BEAT"}
_OTHER_LEADS = {"V7", "V8", "V9", "V3R", "V4R", "V5R", "V6R", "X", "Y", "Z", "AVRNEG", "ES", "AS", "AI"}
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def read_aecg(data: bytes) -> Ecg:
    """Decode an HL7 v3 ``AnnotatedECG`` XML document.

    Parameters
    ----------
    data:
        The XML document.

    Returns
    -------
    Ecg
        Canonical ECG with ``format="aecg"``.

    Raises
    ------
    UnsupportedFormatError
        The root element is not ``AnnotatedECG``.
    DecodeError
        No rhythm sequence set, no sample interval, unknown or duplicate leads, or unsafe XML.
    """
    root = parse_xml(data)
    if local(root.tag) != "AnnotatedECG":
        raise UnsupportedFormatError(f"XML root is {local(root.tag)!r}, not AnnotatedECG")
    notes: list[str] = []
    seq_set = _rhythm_sequence_set(root)
    interval_s: float | None = None
    leads: dict[str, np.ndarray] = {}
    units_seen: set[str] = set()
    for comp in children(seq_set, "component"):
        seq = child(comp, "sequence")
        if seq is None:
            continue
        code_el = child(seq, "code")
        code = (code_el.get("code") if code_el is not None else "") or ""
        value = child(seq, "value")
        if value is None:
            continue
        if code in _TIME_CODES:
            inc = child(value, "increment")
            if inc is not None:
                step = parse_number(inc.get("value"))
                unit = (inc.get("unit") or "s").strip()
                if step is not None and step > 0:
                    interval_s = step * {"s": 1.0, "ms": 1e-3, "us": 1e-6}.get(unit, 1.0)
                    if unit not in ("s", "ms", "us"):
                        notes.append(f"time increment unit {unit!r} read as seconds")
            continue
        name = code.upper()
        if name.startswith("MDC_ECG_LEAD_"):
            short = name[len("MDC_ECG_LEAD_") :]
            hit = normalise_lead_name(short)
            if hit is None:
                if short in _OTHER_LEADS:
                    notes.append(f"lead {code} is not a 12-lead ECG lead; skipped")
                    continue
                raise DecodeError(f"unknown aECG lead code {code!r}")
        else:
            raise DecodeError(f"unknown aECG sequence code {code!r}")
        lead, sign = hit
        if lead in leads:
            raise DecodeError(f"lead {lead} appears twice in the aECG sequence set")
        leads[lead] = _slist(value, lead, sign, units_seen)
    if interval_s is None:
        raise DecodeError("aECG sequence set has no time increment")
    if not leads:
        raise DecodeError("aECG sequence set has no leads")
    n = min(v.size for v in leads.values())
    if any(v.size != n for v in leads.values()):
        notes.append(f"leads of unequal length trimmed to {n} samples")
    if n == 0:
        raise DecodeError("aECG leads have no samples")
    signal = np.full((len(LEADS), n), np.nan, dtype=np.float32)
    for lead, values in leads.items():
        signal[LEAD_INDEX[lead]] = values[:n]
    derived = complete_limb_leads(signal, set(leads))
    if derived:
        notes.append("limb leads derived: " + ", ".join(derived))
    return Ecg(
        signal=signal,
        sampling_rate=float(round(1.0 / interval_s, 6)),
        format="aecg",
        identifiers=_identifiers(root),
        derived_leads=derived,
        source_leads=canonical_order(set(leads)),
        notes=notes,
        source_units=",".join(sorted(units_seen)) or None,
    )


def _rhythm_sequence_set(root: Element) -> Element:
    fallback = None
    for comp in children(root, "component"):
        series = child(comp, "series")
        if series is None:
            continue
        code_el = child(series, "code")
        code = ((code_el.get("code") if code_el is not None else "") or "").upper()
        if code in _DERIVED_SERIES:
            continue
        for sc in children(series, "component"):
            seq_set = child(sc, "sequenceSet")
            if seq_set is not None:
                if code in ("RHYTHM", ""):
                    return seq_set
                fallback = fallback or seq_set
    if fallback is not None:
        return fallback
    raise DecodeError("aECG document has no rhythm sequenceSet")


def _slist(value: Element, lead: str, sign: float, units_seen: set[str]) -> np.ndarray:
    xsi = value.get(_XSI_TYPE)
    if xsi is not None and local(xsi.split(":")[-1]) not in ("SLIST_PQ", "SLIST_INT"):
        raise DecodeError(f"lead {lead}: value type {xsi!r} is not SLIST_PQ")
    origin_el, scale_el = child(value, "origin"), child(value, "scale")
    digits = text(value, "digits")
    if digits is None:
        return np.zeros(0, dtype=np.float32)
    scale = parse_number(scale_el.get("value")) if scale_el is not None else None
    if scale is None:
        raise DecodeError(f"lead {lead}: no scale")
    unit = scale_el.get("unit") if scale_el is not None else None
    units_seen.add(unit or "uV")
    factor = unit_to_mv(unit, default="uV")
    origin = parse_number(origin_el.get("value")) if origin_el is not None else 0.0
    origin_unit = (origin_el.get("unit") if origin_el is not None else None) or unit
    origin_mv = (origin or 0.0) * unit_to_mv(origin_unit, default="uV")
    try:
        values = np.array(digits.split(), dtype=np.float64)
    except ValueError as exc:
        raise DecodeError(f"lead {lead}: digits are not numbers") from exc
    if not np.all(np.isfinite(values)):
        raise DecodeError(f"lead {lead}: digits are not finite")
    return (sign * (origin_mv + scale * factor * values)).astype(np.float32)


def _identifiers(root: Element) -> EcgIdentifiers:
    subject = path(root, "componentOf", "timepointEvent", "componentOf", "subjectAssignment", "subject")
    trial_subject = child(subject, "trialSubject")
    person = child(trial_subject, "subjectDemographicPerson")
    pid = child(trial_subject, "id")
    name_el = child(person, "name")
    name = None
    if name_el is not None:
        family, given = text(name_el, "family"), text(name_el, "given")
        name = "^".join([family or "", given or ""]).rstrip("^") if (family or given) else text(name_el)
    gender = child(person, "administrativeGenderCode")
    birth = child(person, "birthTime")
    low = path(root, "effectiveTime", "low")
    return EcgIdentifiers(
        patient_id=pid.get("extension") if pid is not None else None,
        issuer_of_patient_id=pid.get("root") if pid is not None else None,
        patient_name=name,
        patient_birth_date=(birth.get("value") or "")[:8] or None if birth is not None else None,
        patient_sex=gender.get("code") if gender is not None else None,
        acquisition_datetime=parse_hl7_ts(low.get("value") if low is not None else None),
    )
