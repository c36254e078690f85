"""Explanations stored with a result and drawn in the report: attributions and median beats.

:func:`explain` computes integrated gradients (baseline: the all-zero preprocessed input, i.e. every lead
at its mean; midpoint Riemann sum) of each vessel's logit with respect to the preprocessed input, sums the
absolute attribution over fixed windows per lead, and reports the three most influential windows per
vessel. :func:`median_beats` aligns beats on the R peaks of lead II and takes the median per lead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
from scipy import signal as sps

from ecgcad.errors import ModelError
from ecgcad.integration.formats.ecg import LEADS
from ecgcad.model.preprocess import PreprocessingRecipe, filter_signals
from ecgcad.model.risk import VESSELS

if TYPE_CHECKING:
    from ecgcad.model.predictor import Predictor, TorchPredictor


def _attributions(predictor: TorchPredictor, x: np.ndarray, steps: int, chunk: int) -> np.ndarray:
    """Integrated gradients ``(4, 12, n)`` for one preprocessed input ``x`` ``(12, n)``."""
    import torch

    module = predictor.module
    device = predictor.device
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    alphas = (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps
    # One row per (vessel, step); each row's gradient is taken of its own vessel's logit.
    vessel_of_row = torch.arange(len(VESSELS), device=device).repeat_interleave(steps)
    alpha_of_row = alphas.repeat(len(VESSELS))
    grads = torch.empty((len(VESSELS) * steps, *x.shape), dtype=torch.float32, device=device)
    with torch.enable_grad():
        for start in range(0, len(alpha_of_row), chunk):
            a = alpha_of_row[start : start + chunk]
            inputs = (a[:, None, None] * xt[None]).requires_grad_(True)
            logits = module(inputs)
            picked = logits.gather(1, vessel_of_row[start : start + chunk, None]).sum()
            (grad,) = torch.autograd.grad(picked, inputs)
            grads[start : start + chunk] = grad
    mean_grad = grads.reshape(len(VESSELS), steps, *x.shape).mean(dim=1)
    return (mean_grad * xt[None]).cpu().numpy()


def explain(
    predictor: Predictor,
    signal: np.ndarray,
    *,
    steps: int = 8,
    window_s: float = 0.5,
    top: int = 3,
    chunk: int = 16,
) -> dict[str, Any]:
    """Per-vessel attribution over leads and time for one ECG, JSON-serialisable.

    Parameters
    ----------
    predictor:
        A :class:`~ecgcad.model.predictor.TorchPredictor` (needs ``module``, ``device``, ``preprocess``).
    signal:
        ``(12, 5000)`` canonical mV.
    steps:
        Integrated-gradient steps.
    window_s:
        Width of the coarse attribution windows, seconds.
    top:
        Windows reported per vessel.
    chunk:
        Rows per forward/backward pass (memory bound).

    Returns
    -------
    dict
        ``{"method", "steps", "baseline", "window_samples", "sampling_rate", "leads", "model_version",
        "vessels": {vessel: {"probability", "top_windows": [{"lead", "start", "end", "score"}, …],
        "attribution": [[float per window] per lead]}}}``. ``start``/``end`` are sample indices (end
        exclusive) at ``sampling_rate``; scores and the attribution grid are normalised to a maximum of 1
        per vessel.

    Raises
    ------
    ModelError
        Wrong shape, or a predictor without a torch module.
    """
    if not hasattr(predictor, "module"):
        raise ModelError("explanations need a torch predictor")
    torch_predictor = cast("TorchPredictor", predictor)  # it has a torch module
    sig = np.asarray(signal, dtype=np.float32)
    if sig.ndim != 2:
        raise ModelError(f"expected one signal (12, n), got {sig.shape}")
    x = torch_predictor.preprocess(sig[None])[0]
    recipe: PreprocessingRecipe = torch_predictor.preprocessing
    attr = _attributions(torch_predictor, x, steps, chunk)
    probs = torch_predictor.predict_proba(sig[None])[0]

    width = max(1, int(round(window_s * recipe.sampling_rate)))
    n_windows = -(-x.shape[-1] // width)
    padded = np.zeros((len(VESSELS), x.shape[0], n_windows * width), dtype=np.float64)
    padded[..., : x.shape[-1]] = np.abs(attr)
    grid = padded.reshape(len(VESSELS), x.shape[0], n_windows, width).sum(axis=-1)

    vessels: dict[str, Any] = {}
    for k, vessel in enumerate(VESSELS):
        g = grid[k]
        peak = float(g.max())
        norm = g / peak if peak > 0 else g
        order = np.argsort(-norm, axis=None, kind="stable")[:top]
        windows = []
        for flat in order:
            lead, w = np.unravel_index(int(flat), norm.shape)
            windows.append(
                {
                    "lead": LEADS[int(lead)],
                    "start": int(w * width),
                    "end": int(min((w + 1) * width, x.shape[-1])),
                    "score": round(float(norm[lead, w]), 4),
                }
            )
        vessels[vessel] = {
            "probability": float(probs[k]),
            "top_windows": windows,
            "attribution": np.round(norm, 4).tolist(),
        }
    return {
        "method": "integrated_gradients",
        "steps": int(steps),
        "baseline": "zeros (preprocessed input)",
        "window_samples": int(width),
        "sampling_rate": int(recipe.sampling_rate),
        "leads": list(LEADS),
        "model_version": getattr(predictor, "model_version", None),
        "vessels": vessels,
    }


def r_peaks(signal: np.ndarray, sampling_rate: float = 500.0, lead: int = 1) -> np.ndarray:
    """Sample indices of R peaks, detected on ``lead`` (default II).

    A 5–20 Hz band-pass emphasises the QRS; peaks of its absolute value at least 0.3 s apart and above
    40 % of the 99th percentile are refined to the largest absolute deflection of the 1–40 Hz signal
    within ±50 ms.
    """
    x = np.nan_to_num(np.asarray(signal, dtype=np.float64)[lead])
    fs = float(sampling_rate)
    qrs = sps.sosfiltfilt(sps.butter(2, [5.0, 20.0], btype="bandpass", fs=fs, output="sos"), x)
    env = np.abs(qrs)
    height = 0.4 * np.percentile(env, 99)
    if height <= 0:
        return np.zeros(0, dtype=np.int64)
    peaks, _ = sps.find_peaks(env, height=height, distance=max(1, int(0.3 * fs)))
    wide = sps.sosfiltfilt(sps.butter(2, [1.0, 40.0], btype="bandpass", fs=fs, output="sos"), x)
    half = int(0.05 * fs)
    refined = []
    for p in peaks:
        lo, hi = max(0, p - half), min(len(x), p + half + 1)
        refined.append(lo + int(np.argmax(np.abs(wide[lo:hi]))))
    return np.unique(np.asarray(refined, dtype=np.int64))


def median_beats(
    signal: np.ndarray,
    sampling_rate: float = 500.0,
    *,
    before_s: float = 0.25,
    after_s: float = 0.45,
    recipe: PreprocessingRecipe | None = None,
) -> np.ndarray:
    """The median beat per lead, aligned on the R peaks of lead II.

    The signal is first notch-filtered, band-passed and baseline-corrected as the model's recipe does
    (without the z-score), so the beats are in mV.

    Parameters
    ----------
    signal:
        ``(12, n)`` mV.
    sampling_rate:
        Hz of ``signal``.
    before_s, after_s:
        Window around each R peak, seconds.
    recipe:
        Filters to apply (default: the 4-vessel recipe at ``sampling_rate``).

    Returns
    -------
    numpy.ndarray
        float32 ``(12, round((before_s + after_s) · sampling_rate))``, R peak at index
        ``round(before_s · sampling_rate)``.

    Raises
    ------
    ModelError
        No complete beat was found.
    """
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] != len(LEADS):
        raise ModelError(f"expected a (12, n) signal, got {sig.shape}")
    recipe = recipe or PreprocessingRecipe(sampling_rate=int(sampling_rate), n_samples=sig.shape[1])
    filtered = filter_signals(sig, recipe)
    before = int(round(before_s * sampling_rate))
    after = int(round(after_s * sampling_rate))
    peaks = r_peaks(sig, sampling_rate)
    peaks = peaks[(peaks - before >= 0) & (peaks + after <= sig.shape[1])]
    if len(peaks) == 0:
        raise ModelError("no complete beat found on lead II")
    index = peaks[:, None] + np.arange(-before, after)[None, :]
    beats = filtered[:, index]  # (12, n_beats, window)
    return np.median(beats, axis=1).astype(np.float32)
