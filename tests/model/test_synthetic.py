"""The synthetic generator is reproducible, consistent across limb leads, and puts changes in territories."""

from __future__ import annotations

import numpy as np

from ecgcad.integration.formats.ecg import LEADS
from ecgcad.model.synthetic import generate, synthesize_ecg

L = {name: k for k, name in enumerate(LEADS)}


def test_same_seed_gives_the_same_set() -> None:
    a, b = generate(3, seed=11), generate(3, seed=11)
    np.testing.assert_array_equal(a.signals, b.signals)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.signals.shape == (3, 12, 5000) and a.signals.dtype == np.float32
    assert ((a.heart_rate >= 50) & (a.heart_rate <= 100)).all()


def test_limb_leads_obey_einthoven_and_goldberger() -> None:
    ecg, _ = synthesize_ecg(np.random.default_rng(3), (1, 0, 0, 1), noise=False)
    i, ii = ecg[L["I"]], ecg[L["II"]]
    np.testing.assert_allclose(ecg[L["III"]], ii - i, atol=1e-5)
    np.testing.assert_allclose(ecg[L["aVR"]], -(i + ii) / 2, atol=1e-5)
    np.testing.assert_allclose(ecg[L["aVF"]], ii - i / 2, atol=1e-5)


def _st_level(ecg: np.ndarray, rate: float, lead: str) -> float:
    """Mean of the signal 100–140 ms after each R peak of lead II minus its PR baseline (noise-free)."""
    from ecgcad.model.explain import r_peaks

    peaks = r_peaks(ecg, 500)
    peaks = peaks[(peaks > 100) & (peaks < 4900)]
    x = ecg[L[lead]]
    st = np.mean([x[p + 50 : p + 70].mean() - x[p - 40 : p - 30].mean() for p in peaks])
    return float(st)


def test_left_main_label_elevates_st_in_avr_and_depresses_v5() -> None:
    healthy, rate = synthesize_ecg(np.random.default_rng(5), (0, 0, 0, 0), noise=False)
    lm, _ = synthesize_ecg(np.random.default_rng(5), (0, 1, 0, 0), noise=False)
    assert _st_level(lm, rate, "aVR") - _st_level(healthy, rate, "aVR") > 0.05
    assert _st_level(lm, rate, "V5") - _st_level(healthy, rate, "V5") < -0.05


def test_lad_label_changes_v2_but_not_lead_i() -> None:
    healthy, rate = synthesize_ecg(np.random.default_rng(8), (0, 0, 0, 0), noise=False)
    lad, _ = synthesize_ecg(np.random.default_rng(8), (0, 0, 1, 0), noise=False)
    assert _st_level(lad, rate, "V2") - _st_level(healthy, rate, "V2") < -0.05
    assert abs(_st_level(lad, rate, "I") - _st_level(healthy, rate, "I")) < 1e-6


def test_labels_follow_the_prevalence() -> None:
    labels = generate(300, seed=1, noise=False).labels
    np.testing.assert_allclose(labels.mean(axis=0), [0.3, 0.15, 0.3, 0.3], atol=0.07)
