"""Preprocessing throughput: the batched numpy/scipy path vs per-lead scipy calls; torch path on the GPU.

Usage::

    python bench/bench_preprocess.py [--quick] [--gpu-only] [--out DIR]

Rows (ECG/s, ratio to the per-lead baseline, largest absolute difference from it):

- ``per-lead scipy``: ``filtfilt`` (notch), ``filtfilt`` (band-pass b/a), ``medfilt`` and the z-score, one
  lead at a time — how the recipe reads, the baseline;
- ``batched numpy``: :func:`ecgcad.model.preprocess.preprocess` on the whole batch (what the predictor runs);
- ``torch cpu`` / ``torch cuda``: :class:`ecgcad.model.preprocess_torch.TorchPreprocessor` (float32); the
  CUDA row is skipped with the reason when there is no GPU.

Writes ``<out>/preprocess.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch
from scipy import signal

from ecgcad.model.preprocess import VESSEL_RECIPE, PreprocessingRecipe, preprocess
from ecgcad.model.preprocess_torch import TorchPreprocessor
from ecgcad.model.synthetic import generate


def per_lead(batch: np.ndarray, recipe: PreprocessingRecipe) -> np.ndarray:
    """The baseline: per-lead scipy calls exactly as the recipe describes them."""
    assert recipe.notch_hz is not None and recipe.band_hz is not None
    b_n, a_n = signal.iirnotch(recipe.notch_hz, recipe.notch_q, fs=recipe.sampling_rate)
    b_b, a_b = signal.butter(recipe.band_order, recipe.band_hz, btype="bandpass", fs=recipe.sampling_rate)
    out = np.empty(batch.shape, dtype=np.float32)
    for i, ecg in enumerate(batch):
        for lead in range(ecg.shape[0]):
            x = np.nan_to_num(ecg[lead].astype(np.float64))
            x = signal.filtfilt(b_n, a_n, x)
            x = signal.filtfilt(b_b, a_b, x)
            x = x - signal.medfilt(x, recipe.median_window)
            out[i, lead] = (x - x.mean()) / (x.std() + recipe.eps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--batch", type=int, default=None, help="ECGs per call (default 16; quick 8)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    batch = args.batch or (8 if args.quick else 16)
    repeats = 2 if args.quick else 3
    sig = generate(8, seed=5).signals
    x = np.ascontiguousarray(sig[np.arange(batch) % len(sig)])
    reference = per_lead(x, VESSEL_RECIPE)

    fns: dict[str, Any] = {"per-lead scipy": lambda: per_lead(x, VESSEL_RECIPE)}
    notes = []
    if not args.gpu_only:
        fns["batched numpy"] = lambda: preprocess(x, VESSEL_RECIPE)
        tp_cpu = TorchPreprocessor(VESSEL_RECIPE, "cpu")
        xt = torch.from_numpy(x)
        fns["torch cpu"] = lambda: tp_cpu(xt).numpy()
    if torch.cuda.is_available():
        tp_gpu = TorchPreprocessor(VESSEL_RECIPE, "cuda")
        big = np.ascontiguousarray(sig[np.arange(1024) % len(sig)])
        pinned = torch.from_numpy(big).pin_memory()

        def gpu_big() -> np.ndarray:
            out = tp_gpu(pinned.to("cuda", non_blocking=True)).cpu().numpy()
            return out

        def gpu() -> np.ndarray:
            return tp_gpu(torch.from_numpy(x).to("cuda")).cpu().numpy()

        fns["torch cuda"] = gpu
    else:
        notes.append(
            f"torch cuda row skipped: torch.cuda.is_available() is False (torch {torch.__version__})"
        )

    diffs = {name: float(np.abs(fn() - reference).max()) for name, fn in fns.items()}
    times = _common.timed_interleaved(fns, repeats)
    base = float(np.median(times["per-lead scipy"]))
    rows = []
    for name, t in times.items():
        med = float(np.median(t))
        rows.append(
            {
                "row": name,
                "batch": batch,
                "ecg_per_s": batch / med,
                "ms_per_ecg": 1e3 * med / batch,
                "baseline_ecg_per_s": batch / base,
                "ratio_vs_per_lead": base / med,
                "max_abs_diff": diffs[name],
            }
        )
    if torch.cuda.is_available():
        t = _common.timed_interleaved({"torch cuda b1024": gpu_big}, repeats)["torch cuda b1024"]
        med = float(np.median(t))
        rows.append(
            {
                "row": "torch cuda b1024",
                "batch": 1024,
                "ecg_per_s": 1024 / med,
                "ms_per_ecg": 1e3 * med / 1024,
                "baseline_ecg_per_s": batch / base,
                "ratio_vs_per_lead": (1024 / med) / (batch / base),
                "max_abs_diff": None,
            }
        )
    columns = [
        ("row", "row", 16),
        ("batch", "batch", 5),
        ("ecg_per_s", "ECG/s", 8),
        ("baseline_ecg_per_s", "per-lead ECG/s", 14),
        ("ratio_vs_per_lead", "× per-lead", 10),
        ("ms_per_ecg", "ms/ECG", 7),
        ("max_abs_diff", "max|Δ|", 8),
    ]
    _common.print_table("preprocessing (recipe: 4-vessel head, per-lead z-score)", columns, rows)
    for note in notes:
        print(note)
    path = _common.write_results("preprocess", {"quick": args.quick, "rows": rows, "notes": notes}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
