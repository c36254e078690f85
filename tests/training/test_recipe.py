"""The paper's recipe pieces each do what they claim: uncertainty weighting, PCGrad, schedule, augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from ecgcad.training.recipe import (
    AugmentationSettings,
    UncertaintyWeighting,
    augment,
    augmentation_intensity,
    pcgrad,
    pcgrad_backward,
    per_vessel_bce,
    warmup_cosine,
)


def test_uncertainty_weighting_starts_neutral_and_learns_log_variance_of_each_loss() -> None:
    uw = UncertaintyWeighting(4)
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert torch.allclose(uw(losses), losses)  # s = 0: weight 1, no offset
    opt = torch.optim.SGD(uw.parameters(), lr=0.1)
    for _ in range(2000):
        opt.zero_grad()
        uw(losses).sum().backward()
        opt.step()
    # exp(−s)·L + s is minimal at s = log L: harder tasks get smaller weights exp(−s) = 1/L.
    assert torch.allclose(uw.log_vars.detach(), losses.log(), atol=1e-3)
    assert uw.weights == pytest.approx([2.0, 1.0, 0.5, 0.25], rel=1e-3)


def test_uncertainty_weighting_rejects_wrong_number_of_losses() -> None:
    with pytest.raises(ValueError):
        UncertaintyWeighting(4)(torch.ones(3))


def test_per_vessel_bce_is_the_column_mean() -> None:
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0)
    assert torch.allclose(per_vessel_bce(logits, labels), expected)


def test_pcgrad_projects_conflicting_gradients_and_sums_the_rest() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # dot −1: conflict
    out = pcgrad(g, torch.Generator().manual_seed(0))
    # g1 projected off g2: [1,0] − (−1/2)[−1,1] = [0.5, 0.5]; g2 off g1: [−1,1] − (−1)[1,0] = [0, 1].
    assert torch.allclose(out, torch.tensor([0.5, 1.5]))
    # the combined step no longer increases either task's loss
    assert all(torch.dot(out, gi) >= 0 for gi in g)
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(pcgrad(agreeing), agreeing.sum(0))


def test_pcgrad_backward_equals_plain_backward_without_conflicts() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3))
    x = torch.tensor([1.0, 2.0, 3.0])
    losses = torch.stack([(w * x).sum() ** 2, (w * x).sum() ** 2 * 3])  # same direction: no conflict
    conflicts = pcgrad_backward(losses, [w])
    pc = w.grad.clone()
    w.grad = None
    torch.stack([(w * x).sum() ** 2, (w * x).sum() ** 2 * 3]).sum().backward()
    assert conflicts == 0
    assert torch.allclose(pc, w.grad)


def test_pcgrad_backward_counts_conflicts_and_sets_projected_gradients() -> None:
    w = torch.nn.Parameter(torch.zeros(2))
    losses = torch.stack([w[0] - 0 * w[1], -w[0] + w[1]])  # gradients [1,0] and [−1,1]
    assert pcgrad_backward(losses, [w], torch.Generator().manual_seed(0)) == 1
    assert torch.allclose(w.grad, torch.tensor([0.5, 1.5]))


def test_schedule_warms_up_linearly_over_ten_percent_then_decays_by_cosine_to_one_percent() -> None:
    total = 1000
    values = [warmup_cosine(s, total) for s in range(total)]
    assert values[0] == pytest.approx(1 / 100)
    assert values[49] == pytest.approx(0.5)
    assert values[99] == pytest.approx(1.0)
    assert values[100] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.01)
    mid = 100 + (total - 100 - 1) // 2
    assert values[mid] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (mid - 100) / 899)))
    assert all(a <= b for a, b in zip(values[:100], values[1:100], strict=False))
    assert all(a >= b for a, b in zip(values[100:], values[101:], strict=False))


def test_schedule_drives_adamw_through_lambda_lr() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=3e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 20))
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert (
        lrs[0] == pytest.approx(1.5e-5) and max(lrs) == pytest.approx(3e-5) and lrs[-1] == pytest.approx(3e-7)
    )


def test_augmentation_intensity_decays_from_one_to_a_half() -> None:
    assert augmentation_intensity(0, 100) == 1.0
    assert augmentation_intensity(99, 100) == pytest.approx(0.5)
    assert augmentation_intensity(50, 101) == pytest.approx(0.75)


def _batch() -> torch.Tensor:
    t = torch.arange(1000, dtype=torch.float32)
    return torch.stack(
        [torch.stack([torch.sin(t / (10 + k + lead)) + 2 for lead in range(12)]) for k in range(16)]
    )


def test_augment_at_zero_intensity_is_the_identity_and_never_modifies_its_input() -> None:
    x = _batch()
    before = x.clone()
    out = augment(x, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
    assert torch.allclose(out, x)


def test_augment_shift_is_circular_and_within_ten_percent() -> None:
    x = _batch()
    only_shift = AugmentationSettings(amplitude=0.0, noise_std=0.0, zero_min=0.0, zero_max=0.0)
    out = augment(x, 1.0, only_shift, torch.Generator().manual_seed(1))
    shifts = []
    for b in range(len(x)):
        found = [s for s in range(-100, 101) if torch.allclose(out[b], torch.roll(x[b], s, dims=-1))]
        assert found, "not a circular shift within ±10 %"
        shifts.append(found[0])
    assert len(set(shifts)) > 3


def test_augment_amplitude_noise_and_zeroed_window_stay_in_their_ranges() -> None:
    x = _batch()
    gen = torch.Generator().manual_seed(2)
    amp = augment(x, 1.0, AugmentationSettings(shift_fraction=0, noise_std=0, zero_min=0, zero_max=0), gen)
    ratio = amp / x
    assert ((ratio >= 0.9 - 1e-6) & (ratio <= 1.1 + 1e-6)).all()
    assert torch.allclose(ratio, ratio[:, :1, :1].expand_as(ratio))  # one factor per ECG
    noisy = augment(x, 1.0, AugmentationSettings(shift_fraction=0, amplitude=0, zero_min=0, zero_max=0), gen)
    assert (noisy - x).std().item() == pytest.approx(0.05, rel=0.05)
    zeroed = augment(x, 1.0, AugmentationSettings(shift_fraction=0, amplitude=0, noise_std=0), gen)
    fractions = (zeroed == 0).all(dim=1).float().mean(dim=1)  # all leads zero at once
    assert ((fractions >= 0.02 - 1e-3) & (fractions <= 0.10 + 1e-3)).all()
    half = augment(x, 0.5, AugmentationSettings(shift_fraction=0, amplitude=0, noise_std=0), gen)
    assert ((half == 0).all(dim=1).float().mean(dim=1) <= 0.05 + 1e-3).all()
