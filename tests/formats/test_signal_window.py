"""Canonical window: resampling to 500 Hz, the 10-s window policies, NaN handling."""

from __future__ import annotations

import numpy as np
import pytest

from ecgcad.errors import NotScorableError
from ecgcad.integration.formats.ecg import Ecg
from ecgcad.integration.formats.signal import canonical_window


def _sines(rate: float, seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return np.tile(np.sin(2 * np.pi * freq * t), (12, 1)).astype(np.float32)


def test_real_1000_hz_ecg_becomes_12_by_5000_float32(real):
    cs = canonical_window(real)
    assert cs.signal.shape == (12, 5000) and cs.signal.dtype == np.float32
    assert cs.resampled and cs.source_rate == 1000.0 and cs.start_s == 0.0 and cs.policy == "first"
    # resampled values follow the source at the shared instants
    np.testing.assert_allclose(cs.signal[:, 100:4900], real.signal[:, 200:9800:2], atol=0.05)


@pytest.mark.parametrize("rate", [250.0, 300.0, 1000.0, 512.0])
def test_in_band_sine_survives_resampling(rate):
    cs = canonical_window(Ecg(_sines(rate, 10.0, 10.0), rate, "dicom"))
    expected = _sines(500.0, 10.0, 10.0)
    np.testing.assert_allclose(cs.signal[:, 200:-200], expected[:, 200:-200], atol=0.02)


def test_content_above_250_hz_is_removed_not_aliased():
    cs = canonical_window(Ecg(_sines(1000.0, 10.0, 400.0), 1000.0, "dicom"))
    assert np.abs(cs.signal[:, 200:-200]).max() < 0.05


def test_500_hz_source_is_not_resampled_and_not_aliased(x500):
    ecg = Ecg(x500.copy(), 500.0, "dicom")
    cs = canonical_window(ecg)
    assert not cs.resampled
    np.testing.assert_array_equal(cs.signal, x500)
    assert not np.shares_memory(cs.signal, ecg.signal)


def test_shorter_than_10_s_is_not_scorable(x500):
    with pytest.raises(NotScorableError, match="10 s"):
        canonical_window(Ecg(x500[:, :4999], 500.0, "dicom"))


def test_first_policy_takes_the_first_10_s(x500):
    x = np.concatenate([x500, x500 + 1.0], axis=1)
    cs = canonical_window(Ecg(x, 500.0, "dicom"), "first")
    np.testing.assert_array_equal(cs.signal, x500)


def test_best_policy_skips_a_noisy_start(x500):
    rng = np.random.default_rng(1)
    noisy = x500 + rng.normal(0, 0.5, x500.shape).astype(np.float32)
    x = np.concatenate([noisy, x500], axis=1)
    cs = canonical_window(Ecg(x, 500.0, "dicom"), "best")
    assert cs.policy == "best" and cs.start_s == 10.0
    np.testing.assert_array_equal(cs.signal, x500)


def test_nan_becomes_zero_and_is_counted(x500):
    x = x500.copy()
    x[4, :] = np.nan
    cs = canonical_window(Ecg(x, 500.0, "dicom"))
    assert not np.isnan(cs.signal).any()
    assert (cs.signal[4] == 0).all() and cs.nan_filled == 5000
    assert cs.to_dict()["nan_filled"] == 5000


def test_unknown_policy_is_rejected(x500):
    with pytest.raises(ValueError, match="policy"):
        canonical_window(Ecg(x500, 500.0, "dicom"), "middle")
