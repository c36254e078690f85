"""The canonical model input signal: resampling to 500 Hz and the 10-s window, in one place.

:func:`canonical_window` turns an :class:`~ecgcad.integration.formats.ecg.Ecg` into a ``(12, 5000)`` float32 array
in mV at 500 Hz, lead order I…V6, **before** any filtering or normalisation (those belong to the model's
preprocessing recipe). Decisions made here, recorded in :class:`CanonicalSignal`:

- Resampling is polyphase with scipy's Kaiser-windowed anti-aliasing FIR (:func:`scipy.signal.resample_poly`)
  at the exact rational ratio 500 / source rate; a 500 Hz source is not touched.
- NaN samples (masked padding, absent leads) are set to 0 mV before resampling — the model contract maps
  NaN to 0 anyway, and a polyphase filter would smear one NaN over its whole kernel. The count is kept in
  ``nan_filled``.
- Window policy ``"first"``: the first 10 s. ``"best"``: the 10 s (on a 1-s grid) with the lowest quality
  cost — high-frequency noise plus baseline wander plus clipped samples over all leads. Shorter than 10 s:
  :class:`~ecgcad.errors.NotScorableError`.
- A sampling rate outside :data:`PLAUSIBLE_SAMPLING_RATE_HZ` (a corrupt header: ``inf``, ``1e9``, ``1e-9``)
  is :class:`~ecgcad.errors.NotScorableError` too, before any resampling (whose ratio would be 0, or whose
  output would not fit in memory).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from ecgcad.errors import NotScorableError
from ecgcad.integration.formats.ecg import TARGET_RATE_HZ, TARGET_SAMPLES, TARGET_SECONDS, Ecg

#: Window policies understood by :func:`canonical_window`.
WINDOW_POLICIES: tuple[str, ...] = ("first", "best")

#: Sampling rates (Hz, inclusive) a real resting ECG can have; anything else is a corrupt header.
PLAUSIBLE_SAMPLING_RATE_HZ: tuple[float, float] = (100.0, 20000.0)


@dataclasses.dataclass(slots=True)
class CanonicalSignal:
    """The 10-s, 500 Hz model input cut from one ECG.

    Attributes
    ----------
    signal:
        float32 ``(12, 5000)``, mV, 500 Hz, lead order I…V6; NaN replaced by 0.
    start_s:
        Start of the window in the source record, seconds.
    policy:
        The window policy used (``"first"`` or ``"best"``).
    source_rate:
        Sampling rate of the source, Hz.
    resampled:
        Whether the source was resampled (False for a 500 Hz source).
    nan_filled:
        How many NaN samples of the window were set to 0.
    """

    signal: np.ndarray
    start_s: float
    policy: str
    source_rate: float
    resampled: bool
    nan_filled: int = 0

    def to_dict(self) -> dict[str, object]:
        """The window decisions, without the samples (stored with each result)."""
        return {
            "start_s": self.start_s,
            "policy": self.policy,
            "source_rate": self.source_rate,
            "resampled": self.resampled,
            "nan_filled": self.nan_filled,
            "target_rate_hz": TARGET_RATE_HZ,
            "seconds": TARGET_SECONDS,
        }


def resample_to(signal: np.ndarray, source_rate: float, target_rate: float = TARGET_RATE_HZ) -> np.ndarray:
    """Resample ``(leads, n)`` from ``source_rate`` to ``target_rate`` (polyphase, anti-aliased).

    Parameters
    ----------
    signal:
        float array without NaN.
    source_rate, target_rate:
        Sampling rates in Hz.

    Returns
    -------
    numpy.ndarray
        float32 ``(leads, ceil(n × target / source))``; the input itself when the rates are equal.
    """
    if source_rate == target_rate:
        return signal.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(float(target_rate) / float(source_rate)).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    out = resample_poly(signal, up, down, axis=1)
    return np.ascontiguousarray(out, dtype=np.float32)


def quality_cost(window: np.ndarray, rate: float = TARGET_RATE_HZ) -> float:
    """A scalar badness of a ``(12, n)`` mV window: HF noise + baseline wander + flat-topped samples.

    Used only to rank candidate windows for the ``"best"`` policy (lower is better).
    """
    diff2 = np.diff(window, n=2, axis=1)
    noise = float(np.median(np.abs(diff2), axis=1).sum())
    k = max(1, int(rate))
    n = window.shape[1] // k * k
    if n >= k:
        means = window[:, :n].reshape(window.shape[0], -1, k).mean(axis=2)
        wander = float((means.max(axis=1) - means.min(axis=1)).sum())
    else:
        wander = 0.0
    flat_tops = float(np.count_nonzero(diff2 == 0)) / max(1, diff2.size)
    return noise * 10.0 + wander + flat_tops


def canonical_window(ecg: Ecg, policy: str = "first") -> CanonicalSignal:
    """Cut the 10-s, 500 Hz canonical model input from ``ecg``.

    Parameters
    ----------
    ecg:
        A decoded ECG.
    policy:
        ``"first"`` — the first 10 s; ``"best"`` — the 10 s with the lowest :func:`quality_cost`, searched on
        a 1-s grid.

    Returns
    -------
    CanonicalSignal
        float32 ``(12, 5000)`` mV with the window decisions.

    Raises
    ------
    NotScorableError
        The record is shorter than 10 s, or its sampling rate is not plausible.
    ValueError
        Unknown ``policy``.
    """
    if policy not in WINDOW_POLICIES:
        raise ValueError(f"unknown window policy {policy!r}; expected one of {WINDOW_POLICIES}")
    rate = float(ecg.sampling_rate)
    low, high = PLAUSIBLE_SAMPLING_RATE_HZ
    if not low <= rate <= high:
        raise NotScorableError(f"sampling rate {rate:.6g} Hz is outside {low:g}–{high:g} Hz")
    if ecg.duration_s + 1e-9 < TARGET_SECONDS:
        raise NotScorableError(f"record is {ecg.duration_s:.2f} s long; {TARGET_SECONDS} s are needed")
    source = ecg.signal
    nan_mask = np.isnan(source)
    nan_count = int(nan_mask.sum())
    if nan_count:
        source = np.where(nan_mask, np.float32(0.0), source)
    resampled = rate != TARGET_RATE_HZ
    full = resample_to(source, rate)
    if full.shape[1] < TARGET_SAMPLES:
        raise NotScorableError(f"record gives {full.shape[1]} samples at 500 Hz; {TARGET_SAMPLES} are needed")
    start = 0
    if policy == "best" and full.shape[1] > TARGET_SAMPLES:
        starts = range(0, full.shape[1] - TARGET_SAMPLES + 1, TARGET_RATE_HZ)
        start = min(starts, key=lambda s: quality_cost(full[:, s : s + TARGET_SAMPLES]))
    window = full[:, start : start + TARGET_SAMPLES].astype(np.float32, copy=True)  # never a view of the Ecg
    if nan_count:
        first = int(round(start * rate / TARGET_RATE_HZ))
        last = int(round((start + TARGET_SAMPLES) * rate / TARGET_RATE_HZ))
        nan_count = int(nan_mask[:, first:last].sum())
    return CanonicalSignal(
        signal=window,
        start_s=start / TARGET_RATE_HZ,
        policy=policy,
        source_rate=rate,
        resampled=resampled,
        nan_filled=nan_count,
    )
