"""Fixtures of the fast-path tests: small Net1D models with non-trivial batch-norm statistics."""

from __future__ import annotations

import pytest
import torch

from ecgcad.model.net1d import build_net1d

torch.set_num_threads(1)

SMALL = {"base_filters": 16, "filter_list": [16, 32, 48], "m_blocks_list": [1, 2, 1], "groups_width": 16}


def _randomise_batchnorm(net: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
            mod.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


@pytest.fixture(scope="session", params=[True, False], ids=["bn", "no-bn"])
def small_net(request):
    """A reduced Net1D (odd lengths, channel growth, downsampling) in eval mode, with or without BN."""
    torch.manual_seed(7)
    net = build_net1d(n_classes=4, use_bn=request.param, **SMALL)
    _randomise_batchnorm(net, 11)
    return net.eval()
