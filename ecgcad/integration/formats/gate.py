"""The quality and intended-use gate: runs before any scoring and says *scorable* or why not.

Each failed check adds a :class:`GateReason` with a stable code; an ECG with any reason is never scored and
is reported as "not evaluated" with its reasons.

===============================  ====================================================================
code                             meaning (default threshold; every threshold is a ``[gate]`` setting)
===============================  ====================================================================
``implausible_sampling_rate``    a sampling rate that is not a number between 100 and 20,000 Hz
                                 (:data:`PLAUSIBLE_SAMPLING_RATE_HZ`; a corrupt header, not a setting)
``bad_sensitivity``              a recorded lead's channel sensitivity (× correction factor) is not a
                                 positive finite number (corrupt channel definition)
``non_finite_samples``           a lead holds infinite samples (values overflowed while scaling)
``too_few_leads``                fewer than 8 independent leads (two limb leads + the precordial leads)
``too_short``                    record shorter than ``min_duration_s`` (10 s)
``low_sampling_rate``            sampled below ``min_sampling_rate_hz`` (250 Hz)
``flat_lead``                    a recorded lead is flat (0.5–99.5 % range < 0.05 mV) or disconnected
                                 (> 50 % NaN)
``saturation``                   a recorded lead sits on its extreme value in > 2 % of samples (clipping)
``noise``                        robust SD of the > 40 Hz content of a lead > 0.1 mV (muscle, mains)
``baseline_wander``              range of the < 0.7 Hz content of a lead > 2 mV
``pacemaker``                    ≥ 3 pacing spikes (slope > 1 mV/ms, rebounding within 4 ms, on ≥ 2 leads)
``underage``                     patient younger than ``min_age_years`` (18)
===============================  ====================================================================

The first three are checked first: a record with a corrupt header or corrupt samples gets only those
(and the age check); its signal is never windowed, filtered or scored. :data:`REASON_TEXTS` holds every
code with the fixed short text a report carries (at most :data:`REPORT_TEXT_MAX` characters, so that it
fits a DICOM Code Meaning and the HL7 CWE text whatever the ECG); :attr:`GateReason.text` is the long,
specific sentence kept with the result.

Age: the stated age (DICOM PatientAge, MUSE PatientAge) wins over the birth date; a birth date after the
acquisition, more than 130 years before it, or unparsable, is treated as unknown; an unknown age passes with
a note. Quality checks look at the canonical 10-s window (the samples that would be scored); the pacemaker
check looks at the source samples, because resampling blunts spikes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
from typing import Any

import numpy as np

from ecgcad.config import GateSettings
from ecgcad.errors import NotScorableError
from ecgcad.integration.formats.ecg import LEADS, TARGET_RATE_HZ, Ecg
from ecgcad.integration.formats.signal import PLAUSIBLE_SAMPLING_RATE_HZ, CanonicalSignal

__all__ = [
    "PLAUSIBLE_SAMPLING_RATE_HZ",
    "REASON_TEXTS",
    "REPORT_TEXT_MAX",
    "GateReason",
    "GateThresholds",
    "GateVerdict",
    "check",
    "patient_age_years",
]

_LIMB = set(LEADS[:6])

#: Longest report text of a reason: a DICOM Code Meaning (LO) holds 64 characters.
REPORT_TEXT_MAX = 64

#: Every reason code the gate gives, in check order, with the fixed text a report shows for it
#: ("not evaluated: <text>"); each fits :data:`REPORT_TEXT_MAX`, whatever the ECG.
REASON_TEXTS: dict[str, str] = {
    "implausible_sampling_rate": "sampling rate outside 100-20000 Hz (corrupt record)",
    "bad_sensitivity": "channel sensitivity not a positive number (corrupt record)",
    "non_finite_samples": "samples that are not finite numbers (corrupt record)",
    "too_few_leads": "too few independent leads recorded",
    "too_short": "record too short",
    "low_sampling_rate": "sampling rate too low",
    "flat_lead": "flat or disconnected lead",
    "saturation": "clipped (saturated) lead",
    "noise": "excessive high-frequency noise",
    "baseline_wander": "excessive baseline wander",
    "pacemaker": "paced rhythm, outside the intended use",
    "underage": "patient below the intended-use age",
}


@dataclasses.dataclass(frozen=True, slots=True)
class GateThresholds:
    """Signal-quality thresholds (defaults pass real resting ECGs with a wide margin).

    A :class:`~ecgcad.config.GateSettings` field of the same name overrides each default.
    """

    min_independent_leads: int = 8
    flat_range_mv: float = 0.05
    disconnected_nan_fraction: float = 0.5
    saturation_fraction: float = 0.02
    noise_mv: float = 0.1
    baseline_wander_mv: float = 2.0
    pace_slope_mv_per_ms: float = 1.0
    min_pace_spikes: int = 3

    @classmethod
    def from_settings(cls, settings: GateSettings) -> GateThresholds:
        """Defaults overridden by the same-named fields of ``settings`` where it has them."""
        values = {
            f.name: getattr(settings, f.name) for f in dataclasses.fields(cls) if hasattr(settings, f.name)
        }
        return cls(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class GateReason:
    """Why an ECG is not scorable: a stable snake_case ``code`` and a human sentence.

    Raises
    ------
    ValueError
        ``code`` is not one of :data:`REASON_TEXTS` (every code has its report text).
    """

    code: str
    text: str
    leads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.code not in REASON_TEXTS:
            raise ValueError(f"unknown gate reason code {self.code!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"code": self.code, "text": self.text, "leads": list(self.leads)}


@dataclasses.dataclass(slots=True)
class GateVerdict:
    """Outcome of :func:`check`."""

    reasons: list[GateReason] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    age_years: float | None = None
    #: The canonical window the quality checks looked at (``None`` when the record is too short for one),
    #: so that scoring does not resample the ECG a second time. Not part of :meth:`to_dict`.
    window: CanonicalSignal | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def scorable(self) -> bool:
        """True when no check failed."""
        return not self.reasons

    @property
    def codes(self) -> list[str]:
        """The reason codes, in check order."""
        return [r.code for r in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``scorable``, ``reasons`` (code/text/leads), ``notes``, ``age_years``."""
        return {
            "scorable": self.scorable,
            "reasons": [r.to_dict() for r in self.reasons],
            "notes": list(self.notes),
            "age_years": self.age_years,
        }


def check(ecg: Ecg, settings: GateSettings | None = None, now: dt.date | None = None) -> GateVerdict:
    """Run the quality and intended-use gate on ``ecg``.

    Parameters
    ----------
    ecg:
        A decoded ECG.
    settings:
        Gate settings; defaults of :class:`~ecgcad.config.GateSettings` when ``None``.
    now:
        Reference date for the age when the ECG has no acquisition date (default: today).

    Returns
    -------
    GateVerdict
        ``scorable`` or the list of reasons, plus notes (e.g. "age unknown").
    """
    settings = settings or GateSettings()
    th = GateThresholds.from_settings(settings)
    verdict = GateVerdict()
    reasons = verdict.reasons
    found = [name for name in ecg.source_leads if name in LEADS]
    rows = {name: LEADS.index(name) for name in found}

    if _corrupt(ecg, reasons):
        # Nothing in the signal can be judged (or windowed) on a corrupt header or corrupt samples.
        _age(ecg, settings, now, verdict)
        return verdict

    present = [n for n in found if not _disconnected(ecg.signal[rows[n]], th)]
    independent = min(2, len([n for n in present if n in _LIMB])) + len(
        [n for n in present if n not in _LIMB]
    )
    if independent < th.min_independent_leads:
        reasons.append(
            GateReason(
                "too_few_leads",
                f"{independent} independent leads recorded; at least {th.min_independent_leads} are needed",
            )
        )
    if ecg.duration_s + 1e-9 < settings.min_duration_s:
        reasons.append(
            GateReason(
                "too_short",
                f"record is {ecg.duration_s:.1f} s long; at least {settings.min_duration_s:g} s are needed",
            )
        )
    if ecg.sampling_rate < settings.min_sampling_rate_hz:
        reasons.append(
            GateReason(
                "low_sampling_rate",
                f"sampled at {ecg.sampling_rate:g} Hz; at least {settings.min_sampling_rate_hz:g} Hz are needed",
            )
        )

    _quality(ecg, settings, th, rows, verdict)
    _age(ecg, settings, now, verdict)
    return verdict


def _corrupt(ecg: Ecg, reasons: list[GateReason]) -> bool:
    """Add the reasons of a corrupt record (rate, sensitivity, non-finite samples); True if any."""
    low, high = PLAUSIBLE_SAMPLING_RATE_HZ
    rate = float(ecg.sampling_rate)
    if not low <= rate <= high:  # also NaN and infinity
        reasons.append(
            GateReason(
                "implausible_sampling_rate",
                f"sampling rate {rate:.6g} Hz is outside {low:g}–{high:g} Hz; the record is corrupt",
            )
        )
    bad = [
        name
        for name in LEADS
        if name in ecg.channel_sensitivity
        and not (math.isfinite(ecg.channel_sensitivity[name]) and ecg.channel_sensitivity[name] > 0)
    ]
    if bad:
        reasons.append(
            GateReason(
                "bad_sensitivity",
                "channel sensitivity is not a positive number on lead: " + ", ".join(bad),
                tuple(bad),
            )
        )
    infinite = np.isinf(ecg.signal).any(axis=1)
    lost = [name for row, name in enumerate(LEADS) if infinite[row]]
    if lost:
        reasons.append(
            GateReason(
                "non_finite_samples",
                "samples overflow to infinity on lead: " + ", ".join(lost),
                tuple(lost),
            )
        )
    return bool(reasons)


def _disconnected(row: np.ndarray, th: GateThresholds) -> bool:
    return bool(np.isnan(row).mean() > th.disconnected_nan_fraction) if row.size else True


def _quality(
    ecg: Ecg, settings: GateSettings, th: GateThresholds, rows: dict[str, int], verdict: GateVerdict
) -> None:
    from scipy.signal import sosfiltfilt

    from ecgcad.integration.formats.signal import canonical_window

    reasons = verdict.reasons
    flat = [n for n, r in rows.items() if _disconnected(ecg.signal[r], th)]
    sat: list[str] = []
    for name, r in rows.items():
        x = ecg.signal[r]
        x = x[~np.isnan(x)]
        if name in flat or x.size < 10:
            continue
        hi, lo = x.max(), x.min()
        if hi - lo < th.flat_range_mv:
            continue
        at_extreme = max(np.count_nonzero(x == hi), np.count_nonzero(x == lo)) / x.size
        if at_extreme > th.saturation_fraction:
            sat.append(name)

    try:
        window = canonical_window(ecg, settings.window_policy)
    except NotScorableError:
        window = None  # too short: reported above; judge quality on what there is
    verdict.window = window
    if window is not None:
        w = window.signal
        fs = float(TARGET_RATE_HZ)
    else:
        w = np.nan_to_num(ecg.signal)
        fs = float(ecg.sampling_rate)
    wanted = [n for n in rows if n not in flat]
    idx = [rows[n] for n in wanted]
    noisy: list[str] = []
    wander: list[str] = []
    if idx and w.shape[1] >= 64:
        sub = w[idx].astype(np.float64)
        ranges = np.percentile(sub, 99.5, axis=1) - np.percentile(sub, 0.5, axis=1)
        flat.extend(n for n, rg in zip(wanted, ranges, strict=True) if rg < th.flat_range_mv)
        if fs > 100:
            hp = sosfiltfilt(_butter_sos(4, 40.0, "highpass", fs), sub, axis=1)
            mad = 1.4826 * np.median(np.abs(hp - np.median(hp, axis=1, keepdims=True)), axis=1)
            noisy = [n for n, v in zip(wanted, mad, strict=True) if v > th.noise_mv and n not in flat]
        if sub.shape[1] > 3 * fs:
            lp = sosfiltfilt(_butter_sos(2, 0.7, "lowpass", fs), sub, axis=1)
            span = lp.max(axis=1) - lp.min(axis=1)
            wander = [
                n for n, v in zip(wanted, span, strict=True) if v > th.baseline_wander_mv and n not in flat
            ]
    flat = [n for n in LEADS if n in set(flat)]
    if flat:
        reasons.append(GateReason("flat_lead", "flat or disconnected lead: " + ", ".join(flat), tuple(flat)))
    sat = [n for n in sat if n not in flat]
    if sat:
        reasons.append(GateReason("saturation", "clipped (saturated) lead: " + ", ".join(sat), tuple(sat)))
    if noisy:
        reasons.append(
            GateReason("noise", "excessive high-frequency noise on lead: " + ", ".join(noisy), tuple(noisy))
        )
    if wander:
        reasons.append(
            GateReason(
                "baseline_wander", "excessive baseline wander on lead: " + ", ".join(wander), tuple(wander)
            )
        )

    spikes = _pace_spikes(ecg, [rows[n] for n in rows if n not in flat], th)
    if spikes >= th.min_pace_spikes:
        reasons.append(
            GateReason(
                "pacemaker", f"{spikes} pacemaker spikes found; paced rhythm is outside the intended use"
            )
        )
    elif ecg.sampling_rate < 500:
        verdict.notes.append("sampled below 500 Hz: pacemaker spikes may be missed")


@functools.lru_cache(maxsize=32)
def _butter_sos(order: int, cutoff: float, btype: str, fs: float) -> np.ndarray:
    """A Butterworth filter in second-order sections, designed once per rate (design costs ~0.6 ms); as
    :func:`ecgcad.model.preprocess._band_sos`, the cached array is shared and only read."""
    from scipy.signal import butter

    return np.asarray(butter(order, cutoff, btype, fs=fs, output="sos"))


def _pace_spikes(ecg: Ecg, idx: list[int], th: GateThresholds) -> int:
    """Count pacing spikes: steep jumps that rebound within 4 ms, on at least two leads at once."""
    if len(idx) < 1:
        return 0
    x = np.nan_to_num(ecg.signal[idx].astype(np.float64))
    rate = float(ecg.sampling_rate)
    d = np.diff(x, axis=1) * (rate / 1000.0)  # mV per ms
    steep = np.abs(d) > th.pace_slope_mv_per_ms
    if not steep.any():
        return 0
    reach = max(1, int(round(0.004 * rate)))
    spike = np.zeros(d.shape[1], dtype=np.int32)
    for lead in range(d.shape[0]):
        pos = np.flatnonzero(steep[lead])
        if pos.size == 0:
            continue
        signs = np.sign(d[lead, pos])
        hit = np.zeros(d.shape[1], dtype=bool)
        for k, p in enumerate(pos):
            j = k + 1
            while j < pos.size and pos[j] - p <= reach:
                if signs[j] != signs[k]:
                    hit[p] = True
                    break
                j += 1
        # One vote per lead per spike, spread over the rebound reach so leads line up.
        votes = np.convolve(hit.astype(np.int32), np.ones(reach + 1, dtype=np.int32), mode="same") > 0
        spike += votes
    need = 2 if len(idx) >= 2 else 1
    events = spike >= need
    if not events.any():
        return 0
    # Count separate events (runs of consecutive True).
    starts = np.flatnonzero(events[1:] & ~events[:-1]).size + int(events[0])
    return int(starts)


_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def patient_age_years(ecg: Ecg, now: dt.date | None = None) -> tuple[float | None, str]:
    """The patient's age in years and where it came from.

    Parameters
    ----------
    ecg:
        The ECG (its identifiers hold PatientAge and/or birth date).
    now:
        Reference date when the acquisition date is unknown (default: today).

    Returns
    -------
    tuple
        ``(years, source)``; ``years`` is ``None`` when unknown, ``source`` says which field was used or why
        none could be.
    """
    ids = ecg.identifiers
    if ids.patient_age:
        m = _AGE_RE.match(ids.patient_age)
        if m:
            return int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2).upper()], "stated age"
    ref = ids.acquisition_datetime.date() if ids.acquisition_datetime else (now or dt.date.today())
    birth = ids.patient_birth_date
    if not birth:
        return None, "no age or birth date"
    m = re.match(r"^\s*(\d{4})(\d{2})(\d{2})", birth)
    try:
        born = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None
    except ValueError:
        born = None
    if born is None:
        return None, "unparsable birth date"
    years = (ref - born).days / 365.25
    if years < 0 or years > 130:
        return None, "implausible birth date"
    return years, "birth date"


def _age(ecg: Ecg, settings: GateSettings, now: dt.date | None, verdict: GateVerdict) -> None:
    years, source = patient_age_years(ecg, now)
    verdict.age_years = None if years is None else round(years, 2)
    if years is None:
        verdict.notes.append(f"age unknown ({source}); the age check passes")
        return
    if years < settings.min_age_years:
        verdict.reasons.append(
            GateReason(
                "underage",
                f"patient is younger than {settings.min_age_years} years ({source}); outside the intended use",
            )
        )
