"""Model throughput and latency: each forward-pass mode vs eager fp32 of the same weights, same process.

Usage::

    python bench/bench_model.py [--quick] [--no-compile] [--gpu-only] [--out DIR] [--cache-dir DIR]

Rows per (device, model, batch), timed in interleaved rounds (the machine is shared; the ratio is the
figure, absolute times drift):

- ``eager fp32``: the reference ``Net1D`` in eval mode, ``torch.inference_mode`` — the baseline;
- ``fold``: batch-norm folded into the convolutions, channels-last, eager (``[model] optimize = "fold"``,
  what ``auto`` selects);
- ``compile``: ``fold`` + ``torch.compile`` (inductor, freezing) — ``optimize = "compile"``; its cold
  compile time per batch is reported (cached under ``--cache-dir`` for the next run);
- on CUDA also ``eager bf16`` (the reference under bf16 autocast) and ``compile plain`` (``torch.compile``
  of the unmodified reference, bf16 autocast) as the issue's second baseline.

Models: ``full`` (ECGFounder width, 4-vessel head, random weights, BN on) at batch 1 and 32 on the CPU
(256 and 1024 on the GPU); ``demo`` (the shipped reduced model) at 1, 32, 256 and 1024 on the CPU.
``max|Δp|`` is the largest probability difference from the baseline. Writes ``<out>/model.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch

from ecgcad.model.fastpath import ForwardPass, compiler_available
from ecgcad.model.net1d import Net1D, build_net1d


def full_model() -> Net1D:
    """The full ECGFounder-width Net1D with a 4-vessel head, random weights and BN statistics, eval."""
    torch.manual_seed(0)
    net = build_net1d(n_classes=4, use_bn=True)
    gen = torch.Generator().manual_seed(1)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return net.eval()


def demo_model() -> Net1D:
    from ecgcad.model.demo import load_demo_model

    return load_demo_model().module.eval()


def _input(batch: int) -> torch.Tensor:
    from ecgcad.model.preprocess import preprocess
    from ecgcad.model.synthetic import generate

    sig = generate(8, seed=123).signals
    x = preprocess(sig[np.arange(batch) % len(sig)])
    return torch.from_numpy(x)


def bench(
    net: Net1D,
    model_name: str,
    device: torch.device,
    batches: list[int],
    modes: list[str],
    repeats: int,
    cache_dir: Path | None,
    autotune: bool,
) -> list[dict[str, Any]]:
    cuda = device.type == "cuda"
    net = net.to(device).eval()
    forwards: dict[str, Any] = {}
    for mode in modes:
        forwards[mode] = ForwardPass(
            net, device, mode, max_batch=max(batches), cache_dir=cache_dir, cuda_autotune=autotune
        )
        if mode == "compile":
            forwards[mode].buckets = sorted(set(batches))
    plain_compiled = None
    if cuda and "compile" in modes:
        plain_compiled = torch.compile(net, mode="max-autotune" if autotune else "default")
    rows = []
    for batch in batches:
        x = _input(batch)
        xd = x.to(device)

        def eager(xd: torch.Tensor = xd) -> np.ndarray:
            out = net(xd).float().cpu().numpy()
            return out

        fns: dict[str, Any] = {"eager fp32": eager}
        if cuda:

            def eager_bf16(xd: torch.Tensor = xd) -> np.ndarray:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return net(xd).float().cpu().numpy()

            fns["eager bf16"] = eager_bf16
        compile_s: dict[str, float] = {}
        if plain_compiled is not None:

            def plain(xd: torch.Tensor = xd) -> np.ndarray:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return plain_compiled(xd).float().cpu().numpy()

            t0 = time.perf_counter()
            with torch.inference_mode():
                plain()
            compile_s["compile plain"] = time.perf_counter() - t0
            fns["compile plain"] = plain
        for mode, fwd in forwards.items():
            if mode == "none":
                continue

            def ours(fwd: ForwardPass = fwd, x: torch.Tensor = x) -> np.ndarray:
                return fwd(x).numpy()

            if mode == "compile":
                t0 = time.perf_counter()
                with torch.inference_mode():
                    ours()
                compile_s[mode] = time.perf_counter() - t0
            fns[mode] = ours
        with torch.inference_mode():
            reference = 1 / (1 + np.exp(-eager().astype(np.float64)))
            diffs = {
                name: float(np.abs(1 / (1 + np.exp(-fn().astype(np.float64))) - reference).max())
                for name, fn in fns.items()
            }
            reps = repeats if batch <= 32 else max(2, repeats // 3)
            times = _common.timed_interleaved(fns, reps)
        base = float(np.median(times["eager fp32"]))
        for name, t in times.items():
            med = float(np.median(t))
            rows.append(
                {
                    "device": str(device),
                    "model": model_name,
                    "batch": batch,
                    "row": name,
                    "ecg_per_s": batch / med,
                    "p50_ms": 1e3 * med,
                    "p99_ms": 1e3 * _common.percentile(t, 99),
                    "ratio_vs_eager_fp32": base / med,
                    "baseline_ecg_per_s": batch / base,
                    "max_abs_dp": diffs[name],
                    "compile_s": compile_s.get(name),
                    "repeats": len(t),
                }
            )
        print(f"  {device} {model_name} batch {batch}: done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="full model at batch 32 only, no compile")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile rows")
    parser.add_argument("--gpu-only", action="store_true", help="only the CUDA rows (bench/gpu.sh)")
    parser.add_argument("--autotune", action="store_true", help="CUDA: compile with max-autotune (slow)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on the CPU")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ecgcad" / "inductor",
        help="compiled-artefact cache",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    use_compile = not args.no_compile and not args.quick
    notes = []
    if use_compile and not compiler_available():
        use_compile = False
        notes.append("compile rows skipped: no C++ compiler for inductor")
    cpu_modes = ["fold"] + (["compile"] if use_compile else [])
    rows: list[dict[str, Any]] = []
    cpu = torch.device("cpu")
    if not args.gpu_only:
        if args.quick:
            rows += bench(full_model(), "full", cpu, [32], cpu_modes, 3, args.cache_dir, False)
        else:
            rows += bench(full_model(), "full", cpu, [1, 32], cpu_modes, args.repeats, args.cache_dir, False)
            rows += bench(demo_model(), "demo", cpu, [1, 32, 256, 1024], ["fold"], 3, args.cache_dir, False)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        gpu = torch.device("cuda")
        batches = [1, 1024] if args.quick else [1, 32, 256, 1024]
        gpu_modes = ["fold"] + (["compile"] if not args.no_compile else [])
        rows += bench(
            full_model(), "full", gpu, batches, gpu_modes, args.repeats, args.cache_dir, args.autotune
        )
    else:
        notes.append(f"GPU rows skipped: torch.cuda.is_available() is False (torch {torch.__version__})")

    columns = [
        ("device", "device", 6),
        ("model", "model", 5),
        ("batch", "batch", 5),
        ("row", "row", 13),
        ("ecg_per_s", "ECG/s", 8),
        ("baseline_ecg_per_s", "eager ECG/s", 11),
        ("ratio_vs_eager_fp32", "× eager", 7),
        ("p50_ms", "p50 ms", 8),
        ("p99_ms", "p99 ms", 8),
        ("max_abs_dp", "max|Δp|", 8),
        ("compile_s", "compile s", 9),
    ]
    _common.print_table(
        f"model forward pass (threads {args.threads}, torch {torch.__version__})", columns, rows
    )
    for note in notes:
        print(note)
    path = _common.write_results(
        "model", {"quick": args.quick, "threads": args.threads, "rows": rows, "notes": notes}, args.out
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
