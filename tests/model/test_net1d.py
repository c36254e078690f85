"""Net1D matches the ECGFounder architecture: names, counts, lengths, padding, shortcut and FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecgcad.model import build_net1d
from ecgcad.model.net1d import BasicBlock, Conv1dPadSame, MaxPool1dPadSame, Net1D


@pytest.fixture(scope="module")
def founder() -> Net1D:
    return build_net1d(n_classes=150, use_bn=False).eval()


def test_full_model_has_ecgfounder_parameter_and_key_counts(founder: Net1D) -> None:
    assert sum(p.numel() for p in founder.parameters()) == 30_819_014
    assert len(founder.state_dict()) == 509


def test_state_dict_uses_ecgfounder_key_names(founder: Net1D) -> None:
    keys = set(founder.state_dict())
    for key in (
        "first_conv.conv.weight",
        "first_bn.running_var",
        "stage_list.0.block_list.0.conv1.conv.weight",
        "stage_list.3.block_list.2.conv2.conv.weight",
        "stage_list.6.block_list.3.se_fc1.weight",
        "stage_list.6.block_list.3.se_fc2.bias",
        "stage_list.6.block_list.3.bn3.num_batches_tracked",
        "dense.weight",
        "dense.bias",
    ):
        assert key in keys
    assert tuple(founder.state_dict()["dense.weight"].shape) == (150, 1024)
    # conv2 is grouped with 16 channels per group
    assert founder.stage_list[5].block_list[0].conv2.conv.groups == 1024 // 16


def test_stage_output_lengths_for_a_10_s_input(founder: Net1D) -> None:
    lengths = []
    with torch.inference_mode():
        out = founder.first_conv(torch.zeros(1, 12, 5000))
        lengths.append(out.shape[-1])
        for stage in founder.stage_list:
            out = stage(out)
            lengths.append(out.shape[-1])
        logits = founder(torch.zeros(1, 12, 5000))
    assert lengths == [2500, 1250, 625, 313, 157, 79, 40, 20]
    assert logits.shape == (1, 150)


def test_flops_per_ecg_are_about_2_34_g(founder: Net1D) -> None:
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv1d):
            macs += output.numel() * module.in_channels // module.groups * module.kernel_size[0]
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook) for m in founder.modules() if isinstance(m, nn.Conv1d | nn.Linear)
    ]
    with torch.inference_mode():
        founder(torch.zeros(1, 12, 5000))
    for h in handles:
        h.remove()
    assert 2.2e9 < 2 * macs < 2.5e9


def test_same_padding_matches_the_formula() -> None:
    conv = Conv1dPadSame(1, 1, kernel_size=16, stride=2)
    for length in (5000, 4999, 313, 17, 3):
        assert conv(torch.zeros(1, 1, length)).shape[-1] == -(-length // 2)
    # Left pad is floor(pad / 2): with an impulse at 0 and ones as weights, output 0 sees it.
    conv = Conv1dPadSame(1, 1, kernel_size=4, stride=1)
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.zero_()
    x = torch.zeros(1, 1, 8)
    x[0, 0, 0] = 1.0
    # pad = 3 → 1 left, 2 right: the impulse reaches outputs 0 and 1 only.
    assert conv(x)[0, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_shortcut_max_pool_pads_with_zero_not_minus_infinity() -> None:
    pool = MaxPool1dPadSame(kernel_size=2)
    x = -torch.arange(1.0, 6.0).view(1, 1, 5)  # odd length: last window is (x[4], 0)
    assert pool(x)[0, 0].tolist() == [-1.0, -3.0, 0.0]


def test_shortcut_pads_zero_channels_symmetrically() -> None:
    block = BasicBlock(
        in_channels=16, out_channels=21, ratio=1, kernel_size=3, stride=1, groups=1, downsample=False
    ).eval()
    # Silence the residual branch: the block output is then only the shortcut.
    with torch.no_grad():
        block.conv3.conv.weight.zero_()
        block.conv3.conv.bias.zero_()
    x = torch.randn(1, 16, 10)
    out = block(x)
    assert torch.equal(out[:, :2], torch.zeros(1, 2, 10))  # floor(5 / 2) before
    assert torch.equal(out[:, 2:18], x)
    assert torch.equal(out[:, 18:], torch.zeros(1, 3, 10))  # ceil after


def test_batch_norm_and_dropout_layers_exist_when_switched_off() -> None:
    off = build_net1d(n_classes=4, use_bn=False, use_do=False, filter_list=[16, 32], m_blocks_list=[1, 1])
    on = build_net1d(n_classes=4, use_bn=True, filter_list=[16, 32], m_blocks_list=[1, 1])
    assert list(off.state_dict()) == list(on.state_dict())
    on.load_state_dict(off.state_dict(), strict=True)


def test_return_features_gives_the_pooled_vector() -> None:
    model = build_net1d(n_classes=4, filter_list=[16, 32], m_blocks_list=[1, 1], return_features=True).eval()
    logits, features = model(torch.zeros(2, 12, 500))
    assert logits.shape == (2, 4) and features.shape == (2, 32)
