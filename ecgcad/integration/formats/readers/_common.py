"""Pieces shared by the readers: lead-name normalisation, limb-lead derivation, small parsers.

Every reader maps what it finds to canonical lead names (:data:`ecgcad.integration.formats.ecg.LEADS`), fills a
``(12, n)`` float32 millivolt array (missing rows NaN) and then calls :func:`complete_limb_leads`, which
derives missing limb leads from the two that are present (Einthoven / Goldberger) and says which.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re

import numpy as np

from ecgcad.errors import DecodeError
from ecgcad.integration.formats.ecg import LEADS

#: Row of each canonical lead in the signal array.
LEAD_INDEX: dict[str, int] = {name: i for i, name in enumerate(LEADS)}

LIMB_LEADS: tuple[str, ...] = LEADS[:6]
PRECORDIAL_LEADS: tuple[str, ...] = LEADS[6:]

# Normalised spelling (upper case, no spaces, no "LEAD", no parenthesised qualifier) → canonical name.
# ``-AVR`` means the lead is −aVR (value negated); handled by :func:`normalise_lead_name`.
_ALIASES: dict[str, str] = {
    "I": "I",
    "II": "II",
    "III": "III",
    "AVR": "aVR",
    "AVL": "aVL",
    "AVF": "aVF",
    **{f"V{i}": f"V{i}" for i in range(1, 7)},
    # MDC reference ids (IEEE 11073 / aECG)
    "MDC_ECG_LEAD_I": "I",
    "MDC_ECG_LEAD_II": "II",
    "MDC_ECG_LEAD_III": "III",
    "MDC_ECG_LEAD_AVR": "aVR",
    "MDC_ECG_LEAD_AVL": "aVL",
    "MDC_ECG_LEAD_AVF": "aVF",
    **{f"MDC_ECG_LEAD_V{i}": f"V{i}" for i in range(1, 7)},
    # Long code meanings seen in CID 3001 / vendor files
    "EINTHOVENI": "I",
    "EINTHOVENII": "II",
    "EINTHOVENIII": "III",
}

_NEGATED_AVR = {"-AVR", "NEGATIVEAVR", "MINUSAVR", "MDC_ECG_LEAD_-AVR", "-AVR(GOLDBERGER)"}


def normalise_lead_name(name: str) -> tuple[str, float] | None:
    """Map a lead label or code meaning to ``(canonical name, sign)``.

    Parameters
    ----------
    name:
        A label such as ``"Lead I (Einthoven)"``, ``"V1"``, ``"aVR"``, ``"-aVR"`` or ``"MDC_ECG_LEAD_AVF"``.

    Returns
    -------
    tuple or None
        The canonical name and ``-1.0`` for −aVR (else ``1.0``); ``None`` when the name is not a lead of
        the resting 12-lead ECG.
    """
    raw = name.strip().upper()
    if raw in _ALIASES:
        return _ALIASES[raw], 1.0
    compact = re.sub(r"\(.*?\)", "", raw)
    compact = compact.replace("LEAD", "").replace(" ", "").replace("_", "").strip()
    if compact in _NEGATED_AVR or compact == "NEGAVR":
        return "aVR", -1.0
    if compact in _ALIASES:
        return _ALIASES[compact], 1.0
    if compact.startswith("MDCECGLEAD"):
        rest = compact[len("MDCECGLEAD") :]
        if rest in _ALIASES:
            return _ALIASES[rest], 1.0
    return None


def complete_limb_leads(signal: np.ndarray, present: set[str]) -> list[str]:
    """Derive missing limb leads in place from the limb leads present.

    Any two of I, II, III give the third (III = II − I); aVR, aVL and aVF then follow from I and II
    (aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2).

    Parameters
    ----------
    signal:
        ``(12, n)`` float32 array in canonical order; rows of absent leads are overwritten.
    present:
        Canonical names of the leads found in the source.

    Returns
    -------
    list of str
        The leads that were derived, in canonical order.
    """
    derived: list[str] = []
    i, ii, iii = (LEAD_INDEX[n] for n in ("I", "II", "III"))
    have = set(present)
    if "I" not in have and {"II", "III"} <= have:
        np.subtract(signal[ii], signal[iii], out=signal[i])
        have.add("I")
        derived.append("I")
    if "II" not in have and {"I", "III"} <= have:
        np.add(signal[i], signal[iii], out=signal[ii])
        have.add("II")
        derived.append("II")
    if not {"I", "II"} <= have:
        return derived
    if "III" not in have:
        np.subtract(signal[ii], signal[i], out=signal[iii])
        derived.append("III")
    if "aVR" not in have:
        row = signal[LEAD_INDEX["aVR"]]
        np.add(signal[i], signal[ii], out=row)
        row *= -0.5
        derived.append("aVR")
    if "aVL" not in have:
        np.subtract(signal[i], 0.5 * signal[ii], out=signal[LEAD_INDEX["aVL"]])
        derived.append("aVL")
    if "aVF" not in have:
        np.subtract(signal[ii], 0.5 * signal[i], out=signal[LEAD_INDEX["aVF"]])
        derived.append("aVF")
    return [name for name in LEADS if name in derived]


def canonical_order(names: set[str] | list[str]) -> list[str]:
    """Return ``names`` sorted in canonical lead order."""
    wanted = set(names)
    return [name for name in LEADS if name in wanted]


def unit_to_mv(unit: str | None, *, default: str | None = None) -> float:
    """Factor that converts a voltage unit to millivolts.

    Parameters
    ----------
    unit:
        UCUM (``uV``, ``mV``, ``V``, ``nV``) or a vendor word (``MICROVOLTS``, ``microvolt``).
    default:
        Unit to assume when ``unit`` is empty.

    Raises
    ------
    DecodeError
        The unit is not a voltage.
    """
    text = (unit or default or "").strip()
    key = text.lower().replace(" ", "")
    table = {
        "uv": 1e-3,
        "µv": 1e-3,
        "μv": 1e-3,
        "microvolt": 1e-3,
        "microvolts": 1e-3,
        "mv": 1.0,
        "millivolt": 1.0,
        "millivolts": 1.0,
        "v": 1e3,
        "volt": 1e3,
        "volts": 1e3,
        "nv": 1e-6,
        "nanovolt": 1e-6,
        "nanovolts": 1e-6,
    }
    if key in table:
        return table[key]
    raise DecodeError(f"unknown amplitude unit {text!r}")


def parse_number(text: str | None) -> float | None:
    """Parse a decimal written by a vendor (tolerates spaces and a decimal comma); ``None`` if empty."""
    if text is None:
        return None
    s = text.strip().replace(",", ".")
    if not s:
        return None
    try:
        value = float(s)
    except ValueError as exc:
        raise DecodeError(f"not a number: {text[:40]!r}") from exc
    if not np.isfinite(value):
        raise DecodeError(f"not a finite number: {text[:40]!r}")
    return value


def b64decode_tolerant(text: str | bytes) -> bytes:
    """Decode Base64 that may carry line breaks, spaces or missing padding.

    Raises
    ------
    DecodeError
        The text is not Base64.
    """
    if isinstance(text, str):
        text = text.encode("ascii", "ignore")
    cleaned = re.sub(rb"[^A-Za-z0-9+/=_-]", b"", text).rstrip(b"=")
    cleaned = cleaned.replace(b"-", b"+").replace(b"_", b"/")
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"invalid Base64 data: {exc}") from exc


def parse_hl7_ts(value: str | None) -> dt.datetime | None:
    """Parse an HL7 / DICOM timestamp ``YYYYMMDD[HH[MM[SS[.ffff]]]][±ZZZZ]``; ``None`` if unparsable."""
    if not value:
        return None
    m = re.match(r"^\s*(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", value)
    if not m:
        return None
    year, month, day, hour, minute, second, frac = m.groups()
    try:
        return dt.datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        return None
