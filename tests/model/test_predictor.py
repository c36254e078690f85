"""The torch predictor: deterministic whatever the batch, versioned, thresholded, and strict about input."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ecgcad.config import load_settings
from ecgcad.errors import ModelError
from ecgcad.model import default_predictor
from ecgcad.model.predictor import Predictor, TorchPredictor
from ecgcad.model.risk import RiskThresholds


def test_same_ecg_gets_the_same_probabilities_whatever_its_batch(
    demo_predictor, synthetic_small, real_ecg
) -> None:
    signals = np.concatenate([real_ecg[None], synthetic_small.signals])  # 13 ECGs, max_batch 16
    alone = np.stack([demo_predictor.predict_proba(s[None])[0] for s in signals[:4]])
    together = demo_predictor.predict_proba(signals)
    shuffled = demo_predictor.predict_proba(signals[::-1])[::-1]
    np.testing.assert_allclose(together[:4], alone, atol=1e-6, rtol=0)
    np.testing.assert_allclose(shuffled, together, atol=1e-6, rtol=0)


def test_batches_over_max_batch_are_split_with_the_same_result(demo_predictor, synthetic_small) -> None:
    small = TorchPredictor(demo_predictor.loaded, device="cpu", max_batch=5, warmup=False)
    np.testing.assert_allclose(
        small.predict_proba(synthetic_small.signals),
        demo_predictor.predict_proba(synthetic_small.signals),
        atol=1e-6,
    )


def test_predictions_carry_bands_flags_and_the_model_description(demo_predictor, synthetic_small) -> None:
    preds = demo_predictor.predict(synthetic_small.signals[:3])
    assert len(preds) == 3
    for p in preds:
        assert set(p.probabilities) == {"rca", "lm", "lad", "lcx"}
        assert all(0.0 <= v <= 1.0 for v in p.probabilities.values())
        assert p.any_flagged == any(p.flags.values())
    assert isinstance(demo_predictor, Predictor)
    assert re.fullmatch(r"demo-0\.1\.0\+[0-9a-f]{8}", demo_predictor.model_version)
    info = demo_predictor.describe()
    assert info["demonstration"] is True
    assert info["checkpoint_sha256"].startswith(demo_predictor.model_version[-8:])
    assert info["preprocessing"]["zscore"] == "lead"


def test_thresholds_decide_the_flags(demo_predictor, synthetic_small) -> None:
    never = RiskThresholds(high=dict.fromkeys(("rca", "lm", "lad", "lcx"), 1.0))
    always = RiskThresholds(high=dict.fromkeys(("rca", "lm", "lad", "lcx"), 0.0))
    loaded = demo_predictor.loaded
    assert (
        not TorchPredictor(loaded, thresholds=never, device="cpu", warmup=False)
        .predict(synthetic_small.signals[:2])[0]
        .any_flagged
    )
    assert all(
        TorchPredictor(loaded, thresholds=always, device="cpu", warmup=False)
        .predict(synthetic_small.signals[:2])[0]
        .flags.values()
    )


def test_wrong_input_shape_is_a_model_error(demo_predictor) -> None:
    with pytest.raises(ModelError, match=r"\(B, 12, 5000\)"):
        demo_predictor.predict(np.zeros((12, 5000), np.float32))
    with pytest.raises(ModelError):
        demo_predictor.predict(np.zeros((1, 8, 5000), np.float32))


def test_default_predictor_uses_the_demo_model_and_configured_thresholds() -> None:
    settings = load_settings(None, model={"device": "cpu", "max_batch": 3}, thresholds={"lm": 0.5})
    predictor = default_predictor(settings, warmup=False)
    assert predictor.demonstration and predictor.max_batch == 3
    assert predictor.thresholds.high["lm"] == 0.5


def test_cuda_requested_without_cuda_is_refused(demo_predictor) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelError, match="CUDA is not available"):
        TorchPredictor(demo_predictor.loaded, device="cuda", warmup=False)
