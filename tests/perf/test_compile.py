"""``optimize = "compile"`` on the CPU: inductor output equals the reference, padded buckets are invisible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgcad.model.fastpath import ForwardPass, compiler_available
from ecgcad.model.net1d import build_net1d

pytestmark = pytest.mark.skipif(not compiler_available(), reason="no C++ compiler for inductor")

TINY = {"base_filters": 16, "filter_list": [16, 32], "m_blocks_list": [1, 1], "groups_width": 16}


def test_compiled_forward_equals_the_reference_and_is_batch_invariant(tmp_path) -> None:
    torch.manual_seed(5)
    net = build_net1d(n_classes=4, **TINY).eval()
    fwd = ForwardPass(net, torch.device("cpu"), "compile", max_batch=4, cache_dir=tmp_path / "cache")
    assert fwd.buckets == [1, 4]
    x = torch.randn(4, 12, 5000, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net(x)
        together = fwd(x)
        three = fwd(x[:3])  # padded to the bucket of 4
        one = fwd(x[:1])
    np.testing.assert_allclose(together.numpy(), ref.numpy(), atol=1e-4, rtol=0)
    sig = torch.sigmoid
    np.testing.assert_allclose(sig(three).numpy(), sig(together[:3]).numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(sig(one).numpy(), sig(together[:1]).numpy(), atol=1e-6, rtol=0)
    assert set(fwd.compile_seconds) == {1, 4}
    assert any((tmp_path / "cache").iterdir())
