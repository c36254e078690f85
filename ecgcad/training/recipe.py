"""The pieces of the paper's fine-tuning recipe, each small enough to test on its own.

- :class:`UncertaintyWeighting` — per-vessel BCE weighted by one learned log-variance per vessel
  (Kendall, Gal & Cipolla 2018): ``L_v' = exp(−s_v) · L_v + s_v``;
- :func:`pcgrad` — PCGrad (Yu et al. 2020): each vessel's gradient is projected off the normal plane of
  every other vessel's gradient it conflicts with (negative dot product), in a random order, then summed;
- :func:`warmup_cosine` — linear warm-up over the first 10 % of steps, then cosine decay to 1 % of the
  peak learning rate;
- :func:`augment` — circular time shift (±10 %), amplitude × U(0.9, 1.1), Gaussian noise and zeroing a
  2–10 % window, all scaled by an intensity that :func:`augmentation_intensity` decays from 1.0 to 0.5
  over the run.

Grouped, stratified folds are in :mod:`ecgcad.training.folds`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class UncertaintyWeighting(nn.Module):
    """Per-task losses weighted by learned homoscedastic uncertainty (one log-variance per task).

    Parameters
    ----------
    n_tasks:
        Number of tasks (4 vessels).
    init:
        Initial log-variance (0 → every task weighted 1).
    """

    def __init__(self, n_tasks: int, init: float = 0.0) -> None:
        super().__init__()
        if n_tasks < 1:
            raise ValueError("n_tasks must be ≥ 1")
        self.log_vars = nn.Parameter(torch.full((n_tasks,), float(init)))

    def forward(self, task_losses: torch.Tensor) -> torch.Tensor:
        """Weighted per-task losses ``exp(−s) · L + s`` (shape ``(n_tasks,)``; sum them for the total)."""
        if task_losses.shape != self.log_vars.shape:
            raise ValueError(
                f"expected {tuple(self.log_vars.shape)} task losses, got {tuple(task_losses.shape)}"
            )
        return torch.exp(-self.log_vars) * task_losses + self.log_vars

    @property
    def weights(self) -> list[float]:
        """Current per-task weights ``exp(−s)``."""
        return [float(w) for w in torch.exp(-self.log_vars.detach())]


def per_vessel_bce(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean binary cross-entropy per output column: ``(B, T)`` logits and labels → ``(T,)``."""
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), labels.float(), reduction="none", pos_weight=pos_weight
    )
    return loss.mean(dim=0)


def pcgrad(task_grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Combine per-task gradients with PCGrad ("gradient surgery").

    Parameters
    ----------
    task_grads:
        ``(T, P)``: each task's flattened gradient.
    generator:
        Random order of the other tasks (seeded runs are reproducible).

    Returns
    -------
    torch.Tensor
        ``(P,)``: the sum of the projected task gradients. Without conflicts (all pairwise dot products
        ≥ 0) this is the plain sum.
    """
    if task_grads.ndim != 2:
        raise ValueError("task_grads must be (tasks, parameters)")
    n = task_grads.shape[0]
    projected = task_grads.clone()
    for i in range(n):
        order = torch.randperm(n, generator=generator).tolist()
        for j in order:
            if j == i:
                continue
            gj = task_grads[j]
            dot = torch.dot(projected[i], gj)
            if dot < 0:
                norm2 = torch.dot(gj, gj)
                if norm2 > 0:
                    projected[i] = projected[i] - dot / norm2 * gj
    return projected.sum(dim=0)


def pcgrad_backward(
    task_losses: torch.Tensor,
    params: Sequence[torch.Tensor],
    generator: torch.Generator | None = None,
) -> int:
    """Set ``.grad`` of ``params`` to the PCGrad combination of each task loss's gradient.

    Returns the number of conflicting task pairs seen (for the metrics log).
    """
    params = [p for p in params if p.requires_grad]
    grads = []
    for t in range(task_losses.shape[0]):
        g = torch.autograd.grad(
            task_losses[t], params, retain_graph=t < task_losses.shape[0] - 1, allow_unused=True
        )
        grads.append(
            torch.cat(
                [
                    (x if x is not None else torch.zeros_like(p)).reshape(-1)
                    for x, p in zip(g, params, strict=True)
                ]
            )
        )
    stacked = torch.stack(grads).float()
    gram = stacked @ stacked.T
    conflicts = int(((gram < 0).sum() // 2).item())
    combined = pcgrad(stacked, generator)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = combined[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
    return conflicts


def warmup_cosine(
    step: int, total_steps: int, warmup_fraction: float = 0.1, final_fraction: float = 0.01
) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``total_steps``.

    Linear from ``1/warmup_steps`` to 1 over the first ``warmup_fraction`` of the steps, then cosine from 1
    down to ``final_fraction`` at the last step.
    """
    if total_steps < 1:
        raise ValueError("total_steps must be ≥ 1")
    warmup = max(1, int(round(warmup_fraction * total_steps))) if warmup_fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass(frozen=True, slots=True)
class AugmentationSettings:
    """Strength of each augmentation at intensity 1 (scaled linearly by the intensity).

    Parameters
    ----------
    shift_fraction:
        Largest circular time shift as a fraction of the record (±).
    amplitude:
        Amplitude factor drawn from ``U(1 − a, 1 + a)``.
    noise_std:
        Standard deviation of added Gaussian noise (input units: per-lead z-scores).
    zero_min, zero_max:
        Fraction of the record zeroed in one window (drawn uniformly between these).
    start, end:
        Intensity at the first and last epoch (the paper decays from 1.0 to 0.5).
    """

    shift_fraction: float = 0.1
    amplitude: float = 0.1
    noise_std: float = 0.05
    zero_min: float = 0.02
    zero_max: float = 0.10
    start: float = 1.0
    end: float = 0.5


def augmentation_intensity(
    epoch: int, epochs: int, settings: AugmentationSettings = AugmentationSettings()
) -> float:
    """Intensity at ``epoch`` (0-based): linear from ``settings.start`` to ``settings.end``."""
    if epochs <= 1:
        return settings.start
    return settings.start + (settings.end - settings.start) * epoch / (epochs - 1)


def augment(
    x: torch.Tensor,
    intensity: float,
    settings: AugmentationSettings = AugmentationSettings(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """An augmented copy of a batch ``(B, leads, n)`` (the input is not modified).

    Every ECG gets its own circular shift in ``±shift_fraction · intensity · n`` samples, amplitude factor
    in ``1 ± amplitude · intensity``, Gaussian noise of SD ``noise_std · intensity``, and one window of
    ``U(zero_min, zero_max) · intensity`` of the record set to 0 (all leads). Random numbers are drawn on the
    CPU from ``generator`` so the result does not depend on the device.
    """
    b, _, n = x.shape
    dev = x.device
    g = generator
    max_shift = int(settings.shift_fraction * intensity * n)
    shifts = (
        torch.randint(-max_shift, max_shift + 1, (b,), generator=g)
        if max_shift
        else torch.zeros(b, dtype=torch.long)
    )
    idx = (torch.arange(n)[None, :] - shifts[:, None]) % n
    out = torch.gather(x, 2, idx.to(dev)[:, None, :].expand(-1, x.shape[1], -1))
    scale = 1.0 + settings.amplitude * intensity * (2 * torch.rand(b, generator=g) - 1)
    out = out * scale.to(dev, x.dtype)[:, None, None]
    if settings.noise_std > 0 and intensity > 0:
        noise = torch.randn(x.shape, generator=g) * (settings.noise_std * intensity)
        out = out + noise.to(dev, x.dtype)
    frac = settings.zero_min + (settings.zero_max - settings.zero_min) * torch.rand(b, generator=g)
    width = (frac * intensity * n).long()
    start = (torch.rand(b, generator=g) * (n - width + 1).float()).long()
    pos = torch.arange(n)[None, :]
    mask = (pos >= start[:, None]) & (pos < (start + width)[:, None])
    return out.masked_fill(mask.to(dev)[:, None, :], 0.0)
