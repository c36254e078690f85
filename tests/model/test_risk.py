"""Risk bands and flags follow the configured per-vessel thresholds."""

from __future__ import annotations

import pytest

from ecgcad.config import ThresholdSettings
from ecgcad.errors import ModelError
from ecgcad.model.risk import RiskThresholds, make_prediction

PAPER = RiskThresholds.from_settings(ThresholdSettings())


def test_paper_defaults_flag_lm_at_one_percent_and_others_at_fifteen() -> None:
    p = make_prediction({"rca": 0.149, "lm": 0.01, "lad": 0.15, "lcx": 0.02}, PAPER)
    assert p.flags == {"rca": False, "lm": True, "lad": True, "lcx": False}
    assert p.bands == {"rca": "low", "lm": "high", "lad": "high", "lcx": "low"}
    assert p.any_flagged


def test_nothing_flagged_means_the_ecg_is_not_flagged() -> None:
    p = make_prediction({"rca": 0.1, "lm": 0.005, "lad": 0.1, "lcx": 0.1}, PAPER)
    assert not p.any_flagged
    assert p.to_dict()["any_flagged"] is False


def test_screening_cut_gives_a_band_below_high_without_flagging() -> None:
    thresholds = RiskThresholds.from_settings(ThresholdSettings(screening_rca=0.05))
    p = make_prediction({"rca": 0.07, "lm": 0.0, "lad": 0.07, "lcx": 0.0}, thresholds)
    assert p.bands["rca"] == "screening-positive" and not p.flags["rca"]
    assert p.bands["lad"] == "low"


def test_thresholds_must_name_every_vessel_within_zero_and_one() -> None:
    with pytest.raises(ModelError):
        RiskThresholds(high={"rca": 0.1, "lm": 0.1, "lad": 0.1})
    with pytest.raises(ModelError):
        RiskThresholds(high={"rca": 1.5, "lm": 0.1, "lad": 0.1, "lcx": 0.1})
