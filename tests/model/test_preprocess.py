"""Preprocessing equals per-lead scipy reference calls and is applied to the whole batch at once."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from ecgcad.errors import ModelError
from ecgcad.model.preprocess import (
    ECGFOUNDER_RECIPE,
    VESSEL_RECIPE,
    PreprocessingRecipe,
    preprocess,
    running_median,
)


def _reference(ecg: np.ndarray, recipe: PreprocessingRecipe) -> np.ndarray:
    """Per-lead scipy calls, exactly as the recipe describes (b/a band-pass as ECGFounder's code does)."""
    b_notch, a_notch = signal.iirnotch(recipe.notch_hz, recipe.notch_q, fs=recipe.sampling_rate)
    b_band, a_band = signal.butter(
        recipe.band_order, recipe.band_hz, btype="bandpass", fs=recipe.sampling_rate
    )
    out = np.empty(ecg.shape, dtype=np.float64)
    for lead in range(ecg.shape[0]):
        x = np.nan_to_num(ecg[lead].astype(np.float64))
        x = signal.filtfilt(b_notch, a_notch, x)
        x = signal.filtfilt(b_band, a_band, x)
        out[lead] = x - signal.medfilt(x, recipe.median_window)
    if recipe.zscore == "lead":
        return (out - out.mean(axis=1, keepdims=True)) / (out.std(axis=1, keepdims=True) + recipe.eps)
    return (out - out.mean()) / (out.std() + recipe.eps)


@pytest.mark.parametrize("recipe", [VESSEL_RECIPE, ECGFOUNDER_RECIPE, PreprocessingRecipe(notch_hz=60.0)])
def test_batch_matches_per_lead_scipy_reference_on_real_and_synthetic_ecgs(
    recipe: PreprocessingRecipe, real_ecg: np.ndarray, synthetic_small
) -> None:
    batch = np.concatenate([real_ecg[None], synthetic_small.signals[:3]])
    out = preprocess(batch, recipe)
    assert out.dtype == np.float32 and out.shape == batch.shape
    for k in range(len(batch)):
        np.testing.assert_allclose(out[k], _reference(batch[k], recipe), atol=2e-5, rtol=1e-5)


def test_running_median_equals_medfilt_on_every_row(real_ecg: np.ndarray) -> None:
    rows = np.stack([real_ecg, -real_ecg])
    med = running_median(rows.astype(np.float64), 201)
    for b in range(2):
        for lead in range(12):
            np.testing.assert_array_equal(med[b, lead], signal.medfilt(rows[b, lead].astype(np.float64), 201))


def test_nan_becomes_zero_before_filtering(real_ecg: np.ndarray) -> None:
    with_nan = real_ecg.copy()
    with_nan[3, 4000:] = np.nan
    zeroed = real_ecg.copy()
    zeroed[3, 4000:] = 0.0
    np.testing.assert_array_equal(preprocess(with_nan), preprocess(zeroed))
    assert np.isfinite(preprocess(with_nan)).all()


def test_zscore_modes_normalise_per_lead_or_per_record(real_ecg: np.ndarray) -> None:
    per_lead = preprocess(real_ecg, VESSEL_RECIPE)
    np.testing.assert_allclose(per_lead.std(axis=1), 1.0, atol=1e-4)
    whole = preprocess(real_ecg, ECGFOUNDER_RECIPE)
    assert abs(float(whole.std()) - 1.0) < 1e-4
    assert np.ptp(whole.std(axis=1)) > 0.1


def test_recipe_round_trips_and_refuses_unknown_keys() -> None:
    assert PreprocessingRecipe.from_dict(VESSEL_RECIPE.to_dict()) == VESSEL_RECIPE
    with pytest.raises(ModelError, match="unknown preprocessing recipe keys"):
        PreprocessingRecipe.from_dict({**VESSEL_RECIPE.to_dict(), "resample": True})
    with pytest.raises(ModelError):
        PreprocessingRecipe(zscore="median")  # type: ignore[arg-type]
    with pytest.raises(ModelError):
        PreprocessingRecipe(median_window=200)


def test_wrong_length_is_refused() -> None:
    with pytest.raises(ModelError, match="expected signals"):
        preprocess(np.zeros((1, 12, 4000), np.float32))
