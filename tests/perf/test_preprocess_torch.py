"""The torch preprocessing (for the GPU) equals the numpy/scipy path, checked on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgcad.errors import ModelError
from ecgcad.model.preprocess import ECGFOUNDER_RECIPE, VESSEL_RECIPE, PreprocessingRecipe, preprocess
from ecgcad.model.preprocess_torch import TorchPreprocessor, running_median_torch
from ecgcad.model.synthetic import generate


@pytest.fixture(scope="module")
def signals() -> np.ndarray:
    sig = generate(3, seed=99).signals.copy()
    sig[0, 2, 100:140] = np.nan  # NaN → 0 like the numpy path
    return sig


@pytest.mark.parametrize(
    "recipe",
    [VESSEL_RECIPE, ECGFOUNDER_RECIPE, PreprocessingRecipe(notch_hz=60.0)],
    ids=["vessel", "ecgfounder", "60hz"],
)
def test_float32_torch_preprocessing_matches_numpy_to_1e_4(recipe, signals) -> None:
    ref = preprocess(signals, recipe)
    out = TorchPreprocessor(recipe, dtype=torch.float32)(torch.from_numpy(signals)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_float64_torch_preprocessing_matches_numpy_to_float32_rounding(signals) -> None:
    ref = preprocess(signals, VESSEL_RECIPE)
    out = TorchPreprocessor(VESSEL_RECIPE, dtype=torch.float64)(torch.from_numpy(signals)).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=0)


def test_running_median_equals_scipy_medfilt() -> None:
    from scipy import signal

    x = np.random.default_rng(0).normal(size=(3, 700))
    out = running_median_torch(torch.from_numpy(x), 201).numpy()
    np.testing.assert_array_equal(out, np.stack([signal.medfilt(r, 201) for r in x]))


def test_wrong_shape_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="5000"):
        TorchPreprocessor(VESSEL_RECIPE)(torch.zeros(1, 12, 100))
