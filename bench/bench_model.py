"""Model throughput: our predictor vs a plain eager fp32 run of the same weights, in the same process.

Usage::

    python bench/bench_model.py [--model full|demo] [--threads N] [--repeats N] [--json OUT]

Rows (CPU; on CUDA also GPU rows at larger batches, else skipped with the reason):

- ``eager fp32``: ``module(x)`` under ``torch.no_grad`` on preprocessed input — the baseline;
- ``predictor model``: :meth:`TorchPredictor.forward_preprocessed` (what the worker's forward costs);
- ``predictor e2e``: :meth:`TorchPredictor.predict` including preprocessing and risk bands.

The figure is the ratio to the baseline (machines are shared; absolute times drift). ``max |Δp|`` is the
largest probability difference from the baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecgcad.model.checkpoint import DEFAULT_THRESHOLDS, VESSEL_OUTPUTS, LoadedModel  # noqa: E402
from ecgcad.model.demo import load_demo_model  # noqa: E402
from ecgcad.model.net1d import build_net1d  # noqa: E402
from ecgcad.model.predictor import TorchPredictor  # noqa: E402
from ecgcad.model.preprocess import VESSEL_RECIPE  # noqa: E402
from ecgcad.model.synthetic import generate  # noqa: E402


def full_width_model() -> LoadedModel:
    """The full ECGFounder-width Net1D with a 4-vessel head (random weights, BN on, eval)."""
    torch.manual_seed(0)
    module = build_net1d(n_classes=4, use_bn=True).eval()
    metadata = {
        "name": "bench-full",
        "version": "0",
        "architecture": module.config,
        "outputs": list(VESSEL_OUTPUTS),
        "preprocessing": VESSEL_RECIPE.to_dict(),
        "thresholds": dict(DEFAULT_THRESHOLDS),
    }
    return LoadedModel(module=module, metadata=metadata, sha256="0" * 64)


def timed_interleaved(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds after one warm-up each.

    Interleaving spreads the noise of a shared machine evenly over the baseline and the candidates.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_device(
    loaded: LoadedModel, device: str, batches: list[int], repeats: int, signals: np.ndarray
) -> list[dict[str, Any]]:
    predictor = TorchPredictor(loaded, device=device, max_batch=max(batches))
    module = predictor.module
    dev = predictor.device
    rows = []
    for batch in batches:
        sig = signals[np.arange(batch) % len(signals)]
        x = predictor.preprocess(sig)
        xt = torch.from_numpy(x)

        def eager(xt: torch.Tensor = xt) -> np.ndarray:
            with torch.no_grad():
                out = module(xt.to(dev)).float().cpu().numpy()
            return out

        def ours_model(x: np.ndarray = x) -> np.ndarray:
            return predictor.forward_preprocessed(x)

        def ours_e2e(sig: np.ndarray = sig) -> Any:
            return predictor.predict(sig)

        reference = 1 / (1 + np.exp(-eager().astype(np.float64)))
        diff = float(np.abs(1 / (1 + np.exp(-ours_model().astype(np.float64))) - reference).max())
        reps = max(3, repeats if batch <= 8 else repeats // 3)
        fns = {"eager fp32": eager, "predictor model": ours_model, "predictor e2e": ours_e2e}
        seconds = timed_interleaved(fns, reps)
        base = seconds["eager fp32"]
        for name, t in seconds.items():
            rows.append(
                {
                    "device": str(dev),
                    "batch": batch,
                    "row": name,
                    "ecg_per_s": batch / t,
                    "ms_per_ecg": 1e3 * t / batch,
                    "ratio_vs_eager": base / t,
                    "max_abs_dp": 0.0 if name == "eager fp32" else diff,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["full", "demo"], default="full")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on the CPU")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = full_width_model() if args.model == "full" else load_demo_model()
    signals = generate(8, seed=123).signals
    rows = bench_device(loaded, "cpu", [1, 32], args.repeats, signals)
    skipped = None
    if torch.cuda.is_available():
        gpu_loaded = full_width_model() if args.model == "full" else load_demo_model()
        rows += bench_device(gpu_loaded, "cuda", [1, 32, 256], args.repeats, signals)
    else:
        skipped = f"GPU rows skipped: torch.cuda.is_available() is False (torch {torch.__version__})"

    print(
        f"model: {args.model} ({loaded.metadata['name']}), torch {torch.__version__}, threads {args.threads}"
    )
    header = f"{'device':8} {'batch':>5}  {'row':16} {'ECG/s':>9} {'ms/ECG':>8} {'× eager':>8} {'max|Δp|':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['device']:8} {r['batch']:>5}  {r['row']:16} {r['ecg_per_s']:>9.1f} {r['ms_per_ecg']:>8.2f} "
            f"{r['ratio_vs_eager']:>8.2f} {r['max_abs_dp']:>9.1e}"
        )
    if skipped:
        print(skipped)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": args.threads,
            "model": args.model,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "skipped": skipped,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
