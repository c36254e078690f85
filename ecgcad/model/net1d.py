"""``Net1D``: the ECGFounder backbone (a 1-D RegNet-style CNN), written from its description.

The module tree and parameter names match the public ECGFounder checkpoint exactly
(``first_conv.conv.weight``, ``stage_list.S.block_list.B.conv2.conv.weight``, ``…se_fc1…``,
``dense.weight``), so that its state dict loads strictly. The 12-lead configuration is
:data:`ECGFOUNDER_CONFIG`: 30,819,014 parameters and 509 state-dict entries with the 150-class head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: The ECGFounder 12-lead architecture (``n_classes`` and ``use_bn`` are chosen per use).
ECGFOUNDER_CONFIG: dict[str, Any] = {
    "in_channels": 12,
    "base_filters": 64,
    "ratio": 1,
    "filter_list": [64, 160, 160, 400, 400, 1024, 1024],
    "m_blocks_list": [2, 2, 2, 3, 3, 4, 4],
    "kernel_size": 16,
    "stride": 2,
    "groups_width": 16,
}


class Swish(nn.Module):
    """``x · sigmoid(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Conv1dPadSame(nn.Module):
    """A ``Conv1d`` with "same" padding computed at run time (TensorFlow style).

    Total pad = ``max(0, (ceil(L/s) − 1)·s + k − L)``, ``floor(pad/2)`` on the left. The convolution is held
    as ``self.conv`` so its weights are stored as ``<name>.conv.weight``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        out_len = (length + self.stride - 1) // self.stride
        pad = max(0, (out_len - 1) * self.stride + self.kernel_size - length)
        if pad:
            left = pad // 2
            x = F.pad(x, (left, pad - left), "constant", 0.0)
        return self.conv(x)


class MaxPool1dPadSame(nn.Module):
    """Max-pool whose input gets ``kernel − 1`` zeros (not −∞), ``floor`` of them on the left."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.max_pool = nn.MaxPool1d(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = max(0, self.kernel_size - 1)
        if pad:
            left = pad // 2
            x = F.pad(x, (left, pad - left), "constant", 0.0)
        return self.max_pool(x)


class BasicBlock(nn.Module):
    """Pre-activation bottleneck block with squeeze-excitation and a parameter-free shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ratio: float,
        kernel_size: int,
        stride: int,
        groups: int,
        downsample: bool,
        is_first_block: bool = False,
        use_bn: bool = True,
        use_do: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.downsample = downsample
        self.is_first_block = is_first_block
        self.use_bn = use_bn
        self.use_do = use_do
        middle = int(out_channels * ratio)

        self.bn1 = nn.BatchNorm1d(in_channels)
        self.activation1 = Swish()
        self.do1 = nn.Dropout(p=0.5)
        self.conv1 = Conv1dPadSame(in_channels, middle, kernel_size=1, stride=1)

        self.bn2 = nn.BatchNorm1d(middle)
        self.activation2 = Swish()
        self.do2 = nn.Dropout(p=0.5)
        self.conv2 = Conv1dPadSame(middle, middle, kernel_size=kernel_size, stride=stride, groups=groups)

        self.bn3 = nn.BatchNorm1d(middle)
        self.activation3 = Swish()
        self.do3 = nn.Dropout(p=0.5)
        self.conv3 = Conv1dPadSame(middle, out_channels, kernel_size=1, stride=1)

        self.se_fc1 = nn.Linear(out_channels, out_channels // 2)
        self.se_fc2 = nn.Linear(out_channels // 2, out_channels)
        self.se_activation = Swish()

        if downsample:
            self.max_pool = MaxPool1dPadSame(kernel_size=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = x
        if not self.is_first_block:
            if self.use_bn:
                out = self.bn1(out)
            out = self.activation1(out)
            if self.use_do:
                out = self.do1(out)
        out = self.conv1(out)

        if self.use_bn:
            out = self.bn2(out)
        out = self.activation2(out)
        if self.use_do:
            out = self.do2(out)
        out = self.conv2(out)

        if self.use_bn:
            out = self.bn3(out)
        out = self.activation3(out)
        if self.use_do:
            out = self.do3(out)
        out = self.conv3(out)

        se = out.mean(-1)
        se = self.se_activation(self.se_fc1(se))
        se = torch.sigmoid(self.se_fc2(se))
        out = out * se.unsqueeze(-1)

        if self.downsample:
            identity = self.max_pool(identity)
        if self.out_channels != self.in_channels:
            grow = self.out_channels - self.in_channels
            before = grow // 2
            # Zero channels, symmetric (floor before, ceil after): pad dimension -2.
            identity = F.pad(identity, (0, 0, before, grow - before), "constant", 0.0)
        return out + identity


class BasicStage(nn.Module):
    """``m_blocks`` blocks; block 0 downsamples by ``stride`` and may widen."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ratio: float,
        kernel_size: int,
        stride: int,
        groups: int,
        i_stage: int,
        m_blocks: int,
        use_bn: bool = True,
        use_do: bool = True,
    ) -> None:
        super().__init__()
        self.block_list = nn.ModuleList()
        for i_block in range(m_blocks):
            first = i_block == 0
            self.block_list.append(
                BasicBlock(
                    in_channels=in_channels if first else out_channels,
                    out_channels=out_channels,
                    ratio=ratio,
                    kernel_size=kernel_size,
                    stride=stride if first else 1,
                    groups=groups,
                    downsample=first,
                    is_first_block=(i_stage == 0 and first),
                    use_bn=use_bn,
                    use_do=use_do,
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block_list:
            x = block(x)
        return x


class Net1D(nn.Module):
    """The ECGFounder backbone with a linear ``dense`` head.

    Parameters
    ----------
    in_channels:
        Input leads (12).
    base_filters:
        Channels after the stem convolution.
    ratio:
        Bottleneck width ratio (middle channels = ``out_channels · ratio``).
    filter_list:
        Output channels per stage.
    m_blocks_list:
        Blocks per stage.
    kernel_size:
        Kernel of the stem and the grouped convolutions.
    stride:
        Downsampling of the first block of each stage.
    groups_width:
        Channels per group in the grouped convolutions.
    n_classes:
        Outputs of the ``dense`` head.
    use_bn, use_do:
        Whether batch-norm / dropout run (the layers exist either way, so state dicts match).
    return_features:
        Also return the pooled feature vector from :meth:`forward`.
    """

    def __init__(
        self,
        in_channels: int,
        base_filters: int,
        ratio: float,
        filter_list: Sequence[int],
        m_blocks_list: Sequence[int],
        kernel_size: int,
        stride: int,
        groups_width: int,
        n_classes: int,
        use_bn: bool = True,
        use_do: bool = True,
        return_features: bool = False,
    ) -> None:
        super().__init__()
        if len(filter_list) != len(m_blocks_list):
            raise ValueError("filter_list and m_blocks_list must have the same length")
        if any(f % groups_width for f in filter_list):
            raise ValueError("every entry of filter_list must be a multiple of groups_width")
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "base_filters": int(base_filters),
            "ratio": ratio,
            "filter_list": [int(f) for f in filter_list],
            "m_blocks_list": [int(m) for m in m_blocks_list],
            "kernel_size": int(kernel_size),
            "stride": int(stride),
            "groups_width": int(groups_width),
            "n_classes": int(n_classes),
            "use_bn": bool(use_bn),
            "use_do": bool(use_do),
        }
        self.use_bn = use_bn
        self.return_features = return_features

        self.first_conv = Conv1dPadSame(in_channels, base_filters, kernel_size=kernel_size, stride=2)
        self.first_bn = nn.BatchNorm1d(base_filters)
        self.first_activation = Swish()

        self.stage_list = nn.ModuleList()
        channels = base_filters
        for i_stage, (out_channels, m_blocks) in enumerate(zip(filter_list, m_blocks_list, strict=True)):
            self.stage_list.append(
                BasicStage(
                    in_channels=channels,
                    out_channels=out_channels,
                    ratio=ratio,
                    kernel_size=kernel_size,
                    stride=stride,
                    groups=out_channels // groups_width,
                    i_stage=i_stage,
                    m_blocks=m_blocks,
                    use_bn=use_bn,
                    use_do=use_do,
                )
            )
            channels = out_channels
        self.dense = nn.Linear(channels, n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, shape ``(B, C, L)``."""
        out = self.first_conv(x)
        if self.use_bn:
            out = self.first_bn(out)
        out = self.first_activation(out)
        for stage in self.stage_list:
            out = stage(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(x).mean(-1)
        out = self.dense(features)
        if self.return_features:
            return out, features
        return out


def build_net1d(
    n_classes: int = 4,
    use_bn: bool = True,
    in_channels: int = 12,
    *,
    use_do: bool = True,
    return_features: bool = False,
    **overrides: object,
) -> Net1D:
    """Build the ECGFounder ``Net1D`` (:data:`ECGFOUNDER_CONFIG`), optionally with other widths.

    Parameters
    ----------
    n_classes:
        Outputs of the head: 150 for ECGFounder, 4 for the vessels [RCA, LM, LAD, LCX].
    use_bn:
        Run batch-norm (ECGFounder's 150-class head runs without; the fine-tuned 4-vessel model with).
    in_channels:
        Input leads.
    use_do:
        Run dropout in training mode.
    return_features:
        ``forward`` also returns the pooled features.
    overrides:
        Other ``Net1D`` arguments (``filter_list``, ``m_blocks_list``, …) for reduced models.

    Returns
    -------
    Net1D
        A freshly initialised model in training mode.
    """
    config: dict[str, Any] = {**ECGFOUNDER_CONFIG, "in_channels": in_channels, **overrides}
    return Net1D(n_classes=n_classes, use_bn=use_bn, use_do=use_do, return_features=return_features, **config)


def net1d_from_config(config: dict[str, Any]) -> Net1D:
    """Build a ``Net1D`` from the ``architecture`` dict stored in checkpoint metadata (``Net1D.config``)."""
    known = {
        "in_channels",
        "base_filters",
        "ratio",
        "filter_list",
        "m_blocks_list",
        "kernel_size",
        "stride",
        "groups_width",
        "n_classes",
        "use_bn",
        "use_do",
    }
    unknown = set(config) - known - {"name"}
    if unknown:
        raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
    return Net1D(**{k: v for k, v in config.items() if k in known})
