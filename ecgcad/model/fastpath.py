"""The predictor's forward pass, optimised per device: what ``[model] optimize`` selects.

Modes (:data:`OPTIMIZE_MODES`):

``none``
    The reference ``Net1D`` as loaded (eager; fp32 on the CPU, bf16 autocast on CUDA).
``fold``
    :func:`~ecgcad.model.fast.fold_net1d`: batch-norm folded into the convolutions, channels-last; eager.
    No start-up cost; float32 results equal the reference to ~1e-7.
``compile``
    ``fold`` then ``torch.compile`` (inductor, ``freezing`` — weights are constants, prepacked for oneDNN on
    the CPU; ``max-autotune`` with CUDA graphs on CUDA). Every batch is padded to a fixed *bucket* size
    (1, 4, 16, then powers of two up to ``max_batch``) so that a handful of static shapes are compiled once
    each; compiled artefacts are cached on disk (``cache_dir``) so a restart reuses them. Compiling needs a C
    compiler on the CPU; it costs tens of seconds per bucket when cold (see ``docs/performance.md``).
``auto``
    ``fold`` (eager, no start-up cost). ``compile`` is opt-in because its cold start would delay every
    service start by minutes on a 2-core machine.

On CUDA every mode but ``none`` runs the folded model in bfloat16 (weights and activations) with input
copied from pinned host memory; on the CPU everything stays float32 (the CPU criterion is 1e-4 on
probabilities, which bf16 does not meet).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ecgcad.errors import ModelError
from ecgcad.model.fast import fold_net1d
from ecgcad.model.net1d import Net1D

logger = logging.getLogger(__name__)

OptimizeMode = Literal["auto", "none", "fold", "compile"]
OPTIMIZE_MODES: tuple[str, ...] = ("auto", "none", "fold", "compile")


def compiler_available() -> bool:
    """True when a C/C++ compiler that inductor can use is on ``PATH`` (``CXX``, ``g++``, ``clang++``)."""
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return any(c and shutil.which(c) for c in candidates)


def resolve_optimize(mode: str, device: torch.device) -> str:
    """The concrete mode (``none``, ``fold`` or ``compile``) for ``mode`` on ``device``.

    Raises
    ------
    ModelError
        Unknown mode, or ``compile`` on the CPU without a C compiler.
    """
    if mode not in OPTIMIZE_MODES:
        raise ModelError(f"unknown model optimisation {mode!r} (one of {', '.join(OPTIMIZE_MODES)})")
    if mode == "auto":
        return "fold"
    if mode == "compile" and device.type == "cpu" and not compiler_available():
        raise ModelError("optimize = 'compile' on the CPU needs a C++ compiler (g++ or clang++) on PATH")
    return mode


def batch_buckets(max_batch: int) -> list[int]:
    """Static batch sizes compiled by the ``compile`` mode: 1, 4, 16, 64, … capped by and ending at ``max_batch``."""
    buckets = [b for b in (1, 4, 16) if b < max_batch]
    b = 64
    while b < max_batch:
        buckets.append(b)
        b *= 2
    buckets.append(max_batch)
    return sorted(set(buckets))


def set_compile_cache(cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """Point inductor's on-disk cache (FX graph and kernel caches) at ``cache_dir``; ``None`` keeps torch's.

    The cache is keyed by the graph, the weights (frozen as constants), torch version and hardware, so a
    restart with the same checkpoint reuses every compiled kernel.
    """
    if not cache_dir:
        return None
    path = Path(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return path


class ForwardPass:
    """A callable ``(B, C, L) float32 CPU tensor → (B, n) float32 CPU logits`` for one mode and device.

    Parameters
    ----------
    module:
        The reference ``Net1D`` in eval mode (not modified).
    device:
        Where to run.
    mode:
        A concrete mode (:func:`resolve_optimize`).
    max_batch:
        Largest batch one call receives (the predictor splits bigger inputs).
    cache_dir:
        Compiled-artefact cache for ``compile``.
    cuda_autotune:
        On CUDA, compile with ``max-autotune`` (minutes per bucket when cold); ``False`` uses inductor's
        default kernels (still with CUDA graphs) — the benchmarks' quick GPU run.
    """

    def __init__(
        self,
        module: Net1D,
        device: torch.device,
        mode: str,
        *,
        max_batch: int,
        cache_dir: str | os.PathLike[str] | None = None,
        cuda_autotune: bool = True,
    ) -> None:
        self.device = device
        self.mode = mode
        self.max_batch = int(max_batch)
        self.cuda = device.type == "cuda"
        self.compile_seconds: dict[int, float] = {}
        self.buckets: list[int] = []
        self._pinned: torch.Tensor | None = None
        self.dtype = torch.bfloat16 if self.cuda and mode != "none" else torch.float32
        net: nn.Module
        if mode == "none":
            net = module.to(device).eval()
        else:
            net = fold_net1d(module.eval(), "channels_last").to(device=device, dtype=self.dtype)
        self.net = net
        self._call: Any = net
        if mode == "compile":
            set_compile_cache(cache_dir)
            self.buckets = batch_buckets(self.max_batch)
            options: dict[str, Any] = {"freezing": True}
            if self.cuda:
                # mode="max-autotune" plus freezing (modes and options are exclusive in torch.compile).
                options["triton.cudagraphs"] = True
                if cuda_autotune:
                    options.update({"max_autotune": True, "coordinate_descent_tuning": True})
            self._call = torch.compile(net, dynamic=False, fullgraph=True, options=options)

    def describe(self) -> dict[str, Any]:
        """Mode, dtype and compile buckets (logged at start; recorded by the benchmarks)."""
        return {
            "optimize": self.mode,
            "dtype": str(self.dtype).removeprefix("torch."),
            "buckets": list(self.buckets),
            "compile_seconds": dict(self.compile_seconds),
        }

    def _bucket(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ModelError(f"batch of {n} is larger than max_batch {self.max_batch}")

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return x
        if (
            self._pinned is None
            or self._pinned.shape[0] < x.shape[0]
            or self._pinned.shape[1:] != x.shape[1:]
        ):
            rows = max(x.shape[0], self.max_batch)
            self._pinned = torch.empty((rows, *x.shape[1:]), dtype=x.dtype).pin_memory()
        staged = self._pinned[: x.shape[0]]
        staged.copy_(x)
        return staged.to(self.device, non_blocking=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for one chunk (``len(x) ≤ max_batch``), float32 on the CPU."""
        n = x.shape[0]
        if self.mode == "compile":
            bucket = self._bucket(n)
            if bucket != n:
                x = torch.cat([x, x.new_zeros((bucket - n, *x.shape[1:]))])
            first = bucket not in self.compile_seconds
            t0 = time.perf_counter()
        xd = self._to_device(x)
        if self.mode == "none":
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                logits = self._call(xd)
        else:
            logits = self._call(xd.to(self.dtype))
        out = logits[:n].float().cpu()
        if self.mode == "compile" and first:
            self.compile_seconds[bucket] = time.perf_counter() - t0
            logger.info("compiled batch %d in %.1f s", bucket, self.compile_seconds[bucket])
        return out

    def warmup(self, n_channels: int, n_samples: int, *, all_buckets: bool = True) -> None:
        """Run every bucket once (``compile``: compiles or loads them from the cache) or one batch of 1."""
        sizes = self.buckets if (self.mode == "compile" and all_buckets) else [1]
        with torch.inference_mode():
            for b in sizes:
                self(torch.zeros((b, n_channels, n_samples), dtype=torch.float32))
