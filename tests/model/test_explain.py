"""Explanations are JSON-serialisable, well-formed, and median beats are aligned on lead II's R peaks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecgcad.errors import ModelError
from ecgcad.integration.formats.ecg import LEADS
from ecgcad.model import explain, median_beats
from ecgcad.model.explain import r_peaks
from ecgcad.model.synthetic import synthesize_ecg


def test_explanation_has_top_windows_and_a_coarse_grid_per_vessel(demo_predictor, synthetic_small) -> None:
    out = explain(demo_predictor, synthetic_small.signals[0])
    json.dumps(out)
    assert out["method"] == "integrated_gradients" and out["window_samples"] == 250
    assert set(out["vessels"]) == {"rca", "lm", "lad", "lcx"}
    for vessel in out["vessels"].values():
        grid = np.asarray(vessel["attribution"])
        assert grid.shape == (12, 20) and grid.max() == pytest.approx(1.0)
        windows = vessel["top_windows"]
        assert len(windows) == 3 and windows[0]["score"] == pytest.approx(1.0)
        assert [w["score"] for w in windows] == sorted((w["score"] for w in windows), reverse=True)
        for w in windows:
            assert w["lead"] in LEADS and 0 <= w["start"] < w["end"] <= 5000


def test_lad_attribution_concentrates_on_its_territory(demo_predictor) -> None:
    ecg, _ = synthesize_ecg(np.random.default_rng(21), (0, 0, 1, 0))
    lad = np.asarray(explain(demo_predictor, ecg)["vessels"]["lad"]["attribution"])
    per_lead = lad.sum(axis=1)
    territory = [LEADS.index(name) for name in ("V1", "V2", "V3", "V4")]
    limb = [LEADS.index(name) for name in ("I", "II", "III", "aVR", "aVL", "aVF")]
    # LAD changes live in V1–V4 only; the limb leads carry none of them.
    assert per_lead[territory].mean() > 1.3 * per_lead[limb].mean()


def test_r_peaks_and_median_beat_follow_the_rhythm() -> None:
    ecg, rate = synthesize_ecg(np.random.default_rng(2), (0, 0, 0, 0))
    peaks = r_peaks(ecg)
    assert abs(len(peaks) - rate / 6) <= 2  # beats in 10 s
    beats = median_beats(ecg)
    assert beats.shape == (12, 350) and beats.dtype == np.float32
    assert int(np.argmax(beats[LEADS.index("II")])) in range(120, 131)  # R at 0.25 s · 500 Hz = 125


def test_median_beats_of_a_real_ecg_and_of_silence(real_ecg) -> None:
    assert median_beats(real_ecg).shape == (12, 350)
    with pytest.raises(ModelError, match="no complete beat"):
        median_beats(np.zeros((12, 5000), np.float32))
