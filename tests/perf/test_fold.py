"""The folded Net1D computes the reference function; the forward-pass modes agree and are batch-invariant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgcad.errors import ModelError
from ecgcad.model.fast import fold_net1d
from ecgcad.model.fastpath import ForwardPass, batch_buckets, resolve_optimize

# Lengths that give odd intermediate lengths (asymmetric "same" padding) as well as the canonical 5000.
LENGTHS = [5000, 1237]


@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
@pytest.mark.parametrize("length", LENGTHS)
def test_folded_net_equals_the_reference_module(small_net, layout: str, length: int) -> None:
    x = torch.randn(5, 12, length, generator=torch.Generator().manual_seed(length))
    with torch.inference_mode():
        ref = small_net(x)
        out = fold_net1d(small_net, layout)(x)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_folding_leaves_the_reference_module_untouched(small_net) -> None:
    before = {k: v.clone() for k, v in small_net.state_dict().items()}
    grads = [p.requires_grad for p in small_net.parameters()]
    fold_net1d(small_net)
    after = small_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert grads == [p.requires_grad for p in small_net.parameters()]


def test_folding_a_model_in_training_mode_is_refused(small_net) -> None:
    small_net.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            fold_net1d(small_net)
    finally:
        small_net.eval()


def test_fold_mode_gives_every_ecg_the_same_logits_whatever_its_batch(small_net) -> None:
    fwd = ForwardPass(small_net, torch.device("cpu"), "fold", max_batch=16)
    x = torch.randn(9, 12, 5000, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        together = fwd(x)
        alone = torch.cat([fwd(x[i : i + 1]) for i in range(4)])
        shuffled = fwd(x.flip(0)).flip(0)
    p = torch.sigmoid
    np.testing.assert_allclose(p(alone).numpy(), p(together[:4]).numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(p(shuffled).numpy(), p(together).numpy(), atol=1e-6, rtol=0)


def test_auto_is_fold_and_unknown_modes_are_refused() -> None:
    assert resolve_optimize("auto", torch.device("cpu")) == "fold"
    assert resolve_optimize("none", torch.device("cpu")) == "none"
    with pytest.raises(ModelError, match="unknown model optimisation"):
        resolve_optimize("fast", torch.device("cpu"))


def test_compile_buckets_cover_every_batch_up_to_max_batch() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(32) == [1, 4, 16, 32]
    assert batch_buckets(64) == [1, 4, 16, 64]
    assert batch_buckets(300) == [1, 4, 16, 64, 128, 256, 300]
