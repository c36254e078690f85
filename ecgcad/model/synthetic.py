"""Synthetic 12-lead ECGs with per-vessel "stenosis" labels, for the demonstration model and pipeline tests.

Each beat is a sum of Gaussian waves (P, Q, R, S, an ST-segment plateau, T). The limb leads come from
a frontal-plane vector per wave (lead I and II are its projections; III, aVR, aVL and aVF follow from
Einthoven's and Goldberger's equations, so the six leads are consistent); the precordial leads get
per-lead amplitudes with R-wave progression. Heart rate 50–100 bpm with sinus arrhythmia, QT following
the RR interval, white noise, baseline wander and some mains hum.

A positive label puts ischaemic ST-T changes in the vessel's territory:

- LAD: ST depression and T inversion in V1–V4;
- RCA: inferior (II, III, aVF) ST depression and T inversion, reciprocal change in aVL;
- LCX: lateral (I, aVL, V5–V6) ST depression and T flattening;
- LM: diffuse ST depression (I, II, V3–V6) with ST elevation in aVR and V1.

The labels are what the demonstration model learns; they say nothing about real coronary disease.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ecgcad.integration.formats.ecg import LEADS, TARGET_RATE_HZ, TARGET_SAMPLES
from ecgcad.model.risk import VESSELS

#: Default prevalence per vessel, in :data:`VESSELS` order.
DEFAULT_PREVALENCE: tuple[float, ...] = (0.3, 0.15, 0.3, 0.3)

_WAVES = ("P", "Q", "R", "S", "ST", "T")
_FRONTAL_ANGLE = {"I": 0.0, "II": 60.0}
_PRECORDIAL = ("V1", "V2", "V3", "V4", "V5", "V6")


@dataclasses.dataclass(frozen=True, slots=True)
class SyntheticSet:
    """A batch of synthetic ECGs.

    Attributes
    ----------
    signals:
        float32 ``(n, 12, 5000)`` mV at 500 Hz in :data:`~ecgcad.integration.formats.ecg.LEADS` order.
    labels:
        uint8 ``(n, 4)`` in :data:`VESSELS` order.
    heart_rate:
        float ``(n,)`` beats per minute.
    """

    signals: np.ndarray
    labels: np.ndarray
    heart_rate: np.ndarray


def _frontal(amplitude: float, angle_deg: float) -> np.ndarray:
    """Projections of a frontal-plane vector on leads I and II."""
    theta = np.deg2rad(angle_deg)
    return np.array(
        [amplitude * np.cos(theta - np.deg2rad(_FRONTAL_ANGLE["I"])),
         amplitude * np.cos(theta - np.deg2rad(_FRONTAL_ANGLE["II"]))]
    )  # fmt: skip


def _limb_from_i_ii(i: np.ndarray, ii: np.ndarray) -> np.ndarray:
    """I, II, III, aVR, aVL, aVF from I and II (rows)."""
    return np.stack([i, ii, ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2])


def _amplitudes(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Per-lead amplitude (mV) of each wave: ``(12, len(_WAVES))``."""
    # Frontal-plane vectors (amplitude, axis) of each wave, with per-record variation.
    qrs_axis = rng.normal(50.0, 20.0)
    frontal = {
        "P": _frontal(rng.uniform(0.1, 0.2), rng.normal(55.0, 10.0)),
        "Q": _frontal(rng.uniform(0.05, 0.15), qrs_axis + 180.0 + rng.normal(0, 20)),
        "R": _frontal(rng.uniform(0.8, 1.6), qrs_axis),
        "S": _frontal(rng.uniform(0.1, 0.4), qrs_axis + 160.0 + rng.normal(0, 20)),
        "ST": np.zeros(2),
        "T": _frontal(rng.uniform(0.2, 0.45), qrs_axis + rng.normal(-5.0, 12.0)),
    }
    precordial = {
        "P": np.array([0.06, 0.08, 0.08, 0.08, 0.08, 0.07]),
        "Q": np.array([0.0, 0.0, 0.0, -0.03, -0.08, -0.1]),
        "R": np.array([0.25, 0.5, 0.8, 1.3, 1.4, 1.1]),
        "S": np.array([-0.9, -1.4, -1.0, -0.6, -0.3, -0.15]),
        "ST": np.zeros(6),
        "T": np.array([0.05, 0.45, 0.55, 0.5, 0.4, 0.3]),
    }
    scale = rng.uniform(0.7, 1.3)
    amp = np.zeros((12, len(_WAVES)))
    for w, name in enumerate(_WAVES):
        i, ii = frontal[name]
        amp[:6, w] = _limb_from_i_ii(np.array(i), np.array(ii))
        amp[6:, w] = precordial[name] * scale * rng.uniform(0.85, 1.15, size=6)

    # Ischaemic ST-T changes: ST deviation (negative = depression) and T-wave change per lead.
    st = np.zeros(12)
    t_delta = np.zeros(12)
    v = {name: 6 + k for k, name in enumerate(_PRECORDIAL)}
    rca, lm, lad, lcx = (bool(x) for x in labels)
    if rca:
        sev = rng.uniform(0.6, 1.0)
        i, ii = _frontal(0.15 * sev, -90.0 + rng.normal(0, 8))  # ST vector points away from inferior leads
        st[:6] += _limb_from_i_ii(np.array(i), np.array(ii))
        i, ii = _frontal(0.35 * sev, -90.0 + rng.normal(0, 8))
        t_delta[:6] += _limb_from_i_ii(np.array(i), np.array(ii))
    if lcx:
        sev = rng.uniform(0.6, 1.0)
        i, ii = _frontal(0.15 * sev, 150.0 + rng.normal(0, 8))  # away from I and aVL
        st[:6] += _limb_from_i_ii(np.array(i), np.array(ii))
        for name, f in (("V4", 0.3), ("V5", 1.0), ("V6", 1.0)):
            st[v[name]] -= 0.15 * sev * f
            t_delta[v[name]] -= 0.3 * sev * f
    if lad:
        sev = rng.uniform(0.6, 1.0)
        for name, f in (("V1", 0.6), ("V2", 1.0), ("V3", 1.0), ("V4", 0.8)):
            st[v[name]] -= 0.15 * sev * f
            t_delta[v[name]] -= 0.7 * sev * f
    if lm:
        sev = rng.uniform(0.6, 1.0)
        i, ii = _frontal(0.2 * sev, -150.0 + rng.normal(0, 8))  # towards aVR
        st[:6] += _limb_from_i_ii(np.array(i), np.array(ii))
        st[v["V1"]] += 0.15 * sev
        for name in ("V3", "V4", "V5", "V6"):
            st[v[name]] -= 0.2 * sev
    amp[:, _WAVES.index("ST")] = st
    amp[:, _WAVES.index("T")] += t_delta
    return amp


def synthesize_ecg(
    rng: np.random.Generator,
    labels: np.ndarray | tuple[int, ...] = (0, 0, 0, 0),
    *,
    sampling_rate: int = TARGET_RATE_HZ,
    n_samples: int = TARGET_SAMPLES,
    noise: bool = True,
) -> tuple[np.ndarray, float]:
    """One synthetic 12-lead ECG.

    Parameters
    ----------
    rng:
        Random generator (all randomness comes from it).
    labels:
        0/1 per vessel in :data:`VESSELS` order.
    sampling_rate, n_samples:
        Output rate (Hz) and length.
    noise:
        Add white noise, baseline wander and mains hum.

    Returns
    -------
    tuple
        float32 ``(12, n_samples)`` mV, and the heart rate in bpm.
    """
    labels_arr = np.asarray(labels, dtype=np.int64)
    if labels_arr.shape != (len(VESSELS),):
        raise ValueError(f"labels must have {len(VESSELS)} entries")
    fs = float(sampling_rate)
    t = np.arange(n_samples) / fs
    duration = n_samples / fs

    heart_rate = rng.uniform(50.0, 100.0)
    rr_mean = 60.0 / heart_rate
    # Beat times with sinus arrhythmia, starting before 0 so the record opens mid-rhythm.
    beats = [rng.uniform(-rr_mean, 0.0)]
    while beats[-1] < duration + rr_mean:
        beats.append(beats[-1] + rr_mean * (1.0 + rng.normal(0.0, 0.03)))
    r_times = np.array(beats)

    qt_scale = np.sqrt(rr_mean)
    # (centre relative to R in s, width in s) of each wave.
    timing = {
        "P": (-rng.uniform(0.14, 0.18), 0.022),
        "Q": (-0.022, 0.007),
        "R": (0.0, 0.009),
        "S": (0.024, 0.009),
        "ST": (0.16 * qt_scale, 0.05 * qt_scale),
        "T": (0.30 * qt_scale + rng.normal(0, 0.01), 0.045 * qt_scale),
    }
    waves = np.zeros((len(_WAVES), n_samples))
    dt = t[None, :] - r_times[:, None]  # (beats, samples)
    for w, name in enumerate(_WAVES):
        centre, width = timing[name]
        waves[w] = np.exp(-0.5 * ((dt - centre) / width) ** 2).sum(axis=0)
    # The ST "plateau": a Gaussian scaled up and clipped at 1, so it is flat between the J point and T.
    st = waves[_WAVES.index("ST")]
    waves[_WAVES.index("ST")] = np.clip(st * 1.6, 0.0, 1.0)

    ecg = _amplitudes(rng, labels_arr) @ waves

    if noise:
        ecg += rng.normal(0.0, rng.uniform(0.005, 0.03), size=ecg.shape)
        for _ in range(2):
            f = rng.uniform(0.05, 0.5)
            phase = rng.uniform(0, 2 * np.pi)
            ecg += rng.uniform(0.02, 0.2, size=(12, 1)) * np.sin(2 * np.pi * f * t + phase)[None, :]
        ecg += rng.uniform(0.0, 0.03) * np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi))[None, :]
    return ecg.astype(np.float32), float(heart_rate)


def generate(
    n: int,
    seed: int,
    *,
    prevalence: tuple[float, ...] = DEFAULT_PREVALENCE,
    noise: bool = True,
) -> SyntheticSet:
    """``n`` synthetic ECGs with independent per-vessel labels, reproducible from ``seed``.

    Parameters
    ----------
    n:
        Number of ECGs.
    seed:
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same set.
    prevalence:
        Probability of a positive label per vessel (:data:`VESSELS` order).
    noise:
        Add noise and baseline wander.

    Returns
    -------
    SyntheticSet
    """
    if len(prevalence) != len(VESSELS):
        raise ValueError(f"prevalence must have {len(VESSELS)} entries")
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(VESSELS))) < np.asarray(prevalence)).astype(np.uint8)
    signals = np.empty((n, len(LEADS), TARGET_SAMPLES), dtype=np.float32)
    rates = np.empty(n)
    for k in range(n):
        signals[k], rates[k] = synthesize_ecg(rng, labels[k], noise=noise)
    return SyntheticSet(signals=signals, labels=labels, heart_rate=rates)
