"""Preprocessing of canonical signals into model input, driven by a recipe stored in the checkpoint.

From the canonical ``(12, 5000)`` float32 mV signal at 500 Hz: NaN → 0; IIR notch at the mains frequency
(Q 30); Butterworth order-4 0.67–40 Hz band-pass, zero-phase (forward-backward, second-order sections);
subtract a 201-sample running median (zero-padded at the edges, as ``scipy.signal.medfilt``); z-score —
``"global"`` over the whole record (ECGFounder's 150-class head) or ``"lead"`` per lead (the 4-vessel head),
with ``eps`` added to the standard deviation.

Every step runs on the whole batch at once along the time axis (no Python loop per lead or per ECG).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import numpy as np
from scipy import ndimage, signal

from ecgcad.errors import ModelError

ZScoreMode = Literal["global", "lead"]


@dataclasses.dataclass(frozen=True, slots=True)
class PreprocessingRecipe:
    """How canonical signals become model input; stored in checkpoint metadata as :meth:`to_dict`.

    Parameters
    ----------
    sampling_rate:
        Hz of the input (500).
    n_samples:
        Samples per input (5000 = 10 s).
    notch_hz:
        Mains frequency to remove (50 or 60); ``None`` for no notch.
    notch_q:
        Quality factor of the notch.
    band_hz:
        Band-pass edges in Hz; ``None`` for no band-pass.
    band_order:
        Butterworth order (applied forward and backward, so the magnitude response is squared).
    median_window:
        Samples of the running median subtracted as baseline (odd); ``0`` for none.
    zscore:
        ``"global"`` or ``"lead"``.
    eps:
        Added to the standard deviation.
    """

    sampling_rate: int = 500
    n_samples: int = 5000
    notch_hz: float | None = 50.0
    notch_q: float = 30.0
    band_hz: tuple[float, float] | None = (0.67, 40.0)
    band_order: int = 4
    median_window: int = 201
    zscore: ZScoreMode = "lead"
    eps: float = 1e-8
    version: int = 1

    def __post_init__(self) -> None:
        if self.zscore not in ("global", "lead"):
            raise ModelError(f"unknown z-score mode {self.zscore!r} (expected 'global' or 'lead')")
        if self.median_window < 0 or (self.median_window and self.median_window % 2 == 0):
            raise ModelError(f"median_window must be 0 or odd, got {self.median_window}")
        nyquist = self.sampling_rate / 2
        if self.notch_hz is not None and not 0 < self.notch_hz < nyquist:
            raise ModelError(f"notch_hz {self.notch_hz} outside (0, {nyquist})")
        if self.band_hz is not None and not 0 < self.band_hz[0] < self.band_hz[1] < nyquist:
            raise ModelError(f"band_hz {self.band_hz} invalid for {self.sampling_rate} Hz")
        if self.version != 1:
            raise ModelError(f"unknown preprocessing recipe version {self.version}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in checkpoints and with every result)."""
        out = dataclasses.asdict(self)
        out["band_hz"] = list(self.band_hz) if self.band_hz is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessingRecipe:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a recipe we cannot honour)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ModelError(f"unknown preprocessing recipe keys: {sorted(unknown)}")
        kwargs = dict(data)
        if kwargs.get("band_hz") is not None:
            kwargs["band_hz"] = (float(kwargs["band_hz"][0]), float(kwargs["band_hz"][1]))
        return cls(**kwargs)


#: The recipe of the 4-vessel head (per-lead z-score).
VESSEL_RECIPE = PreprocessingRecipe(zscore="lead")
#: The recipe of ECGFounder's 150-class head (global z-score).
ECGFOUNDER_RECIPE = PreprocessingRecipe(zscore="global")


@functools.lru_cache(maxsize=16)
def _notch(freq: float, q: float, fs: int) -> tuple[np.ndarray, np.ndarray]:
    b, a = signal.iirnotch(freq, q, fs=fs)
    return b, a


@functools.lru_cache(maxsize=16)
def _band_sos(low: float, high: float, order: int, fs: int) -> np.ndarray:
    return np.asarray(signal.butter(order, [low, high], btype="bandpass", fs=fs, output="sos"))


def filter_signals(signals: np.ndarray, recipe: PreprocessingRecipe) -> np.ndarray:
    """Notch, band-pass and baseline removal (everything but the z-score), float64 out.

    Parameters
    ----------
    signals:
        ``(..., n_samples)`` array in mV; NaNs become 0.
    recipe:
        The recipe.

    Returns
    -------
    numpy.ndarray
        float64 array of the same shape.
    """
    x = np.nan_to_num(np.asarray(signals, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if recipe.notch_hz is not None:
        b, a = _notch(float(recipe.notch_hz), float(recipe.notch_q), recipe.sampling_rate)
        x = signal.filtfilt(b, a, x, axis=-1)
    if recipe.band_hz is not None:
        sos = _band_sos(recipe.band_hz[0], recipe.band_hz[1], recipe.band_order, recipe.sampling_rate)
        x = signal.sosfiltfilt(sos, x, axis=-1)
    if recipe.median_window:
        x = x - running_median(x, recipe.median_window)
    return x


def running_median(x: np.ndarray, window: int) -> np.ndarray:
    """Running median along the last axis, zero-padded at both ends (equals ``scipy.signal.medfilt``).

    ndimage's fast 1-D rank filter runs only on 1-D input (an N-D ``size=(1, …, window)`` filter is ~30×
    slower), so every row is laid end to end in one 1-D array, each row framed by ``window // 2`` zeros:
    a window centred on a row's sample then sees exactly that row and the zero padding ``medfilt`` uses.
    """
    half = window // 2
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    framed = np.zeros((rows.shape[0], n + 2 * half), dtype=rows.dtype)
    framed[:, half : half + n] = rows
    med = ndimage.median_filter(framed.reshape(-1), size=window, mode="constant", cval=0.0)
    return med.reshape(rows.shape[0], n + 2 * half)[:, half : half + n].reshape(x.shape)


def zscore(x: np.ndarray, mode: ZScoreMode, eps: float = 1e-8) -> np.ndarray:
    """Z-score ``(B, leads, samples)``: per lead (``"lead"``) or over each whole record (``"global"``)."""
    axes: tuple[int, ...] = (-1,) if mode == "lead" else (-2, -1)
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    return (x - mean) / (std + eps)


def preprocess(signals: np.ndarray, recipe: PreprocessingRecipe = VESSEL_RECIPE) -> np.ndarray:
    """Turn canonical signals into model input.

    Parameters
    ----------
    signals:
        ``(B, 12, n_samples)`` or ``(12, n_samples)`` float mV at ``recipe.sampling_rate``.
    recipe:
        The checkpoint's recipe.

    Returns
    -------
    numpy.ndarray
        float32 array of the input's shape.

    Raises
    ------
    ModelError
        The shape does not match the recipe.
    """
    arr = np.asarray(signals)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-1] != recipe.n_samples:
        raise ModelError(
            f"expected signals of shape (B, leads, {recipe.n_samples}), got {tuple(np.shape(signals))}"
        )
    x = zscore(filter_signals(arr, recipe), recipe.zscore, recipe.eps).astype(np.float32)
    return x[0] if squeeze else x
