"""Inference-only forms of ``Net1D``: batch-norm folded into the convolutions, optional channels-last.

:func:`fold_net1d` turns a trained :class:`~ecgcad.model.net1d.Net1D` (eval mode) into a
:class:`FoldedNet1D` that computes the same function with fewer kernels:

- every batch-norm that directly follows a convolution is folded into that convolution's weight and bias
  (``first_bn`` → ``first_conv``, ``bn2`` → ``conv1``, ``bn3`` → ``conv2``); the pre-activation ``bn1`` of
  each block follows a residual sum, so it stays as one precomputed ``x·scale + shift``;
- dropout is gone (eval mode);
- with ``layout="channels_last"`` activations are held as ``(B, C, 1, L)`` in channels-last memory, so the
  oneDNN convolutions (the 1×1 ones are 75 % of the FLOPs) run in NWC without reordering their input and
  output on every call.

The folded model is what :class:`~ecgcad.model.fastpath.ForwardPass` compiles (``torch.compile``) for the
CPU and GPU fast paths. Folding changes rounding only (float32 throughout); tests compare it with the
reference module at 1e-5 on logits.
"""

from __future__ import annotations

import copy
import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ecgcad.model.net1d import BasicBlock, Conv1dPadSame, Net1D

logger = logging.getLogger(__name__)

Layout = Literal["ncl", "channels_last"]


def _bn_scale_shift(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode batch-norm as ``y = x·scale + shift`` (float64 math, float32 out)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("batch-norm without running statistics cannot be folded")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    weight = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    shift = bias - mean * scale
    return scale, shift


class FoldedConv(nn.Module):
    """A "same"-padded convolution (TensorFlow style) with an optional batch-norm folded into it.

    Parameters
    ----------
    source:
        The ``Conv1dPadSame`` to copy.
    bn:
        A batch-norm that directly follows ``source`` (folded in), or ``None``.
    layout:
        ``"ncl"`` (``conv1d`` on ``(B, C, L)``) or ``"channels_last"`` (``conv2d`` on ``(B, C, 1, L)``).
    """

    def __init__(self, source: Conv1dPadSame, bn: nn.BatchNorm1d | None, layout: Layout) -> None:
        super().__init__()
        conv = source.conv
        weight = conv.weight.detach().double()
        bias = (
            conv.bias.detach().double()
            if conv.bias is not None
            else torch.zeros(conv.out_channels, dtype=torch.float64)
        )
        if bn is not None:
            scale, shift = _bn_scale_shift(bn)
            weight = weight * scale[:, None, None]
            bias = bias * scale + shift
        self.kernel_size = int(source.kernel_size)
        self.stride = int(source.stride)
        self.groups = int(conv.groups)
        self.layout: Layout = layout
        if layout == "channels_last":
            weight = weight.unsqueeze(2)  # (out, in/groups, 1, k)
            self.weight = nn.Parameter(
                weight.float().contiguous(memory_format=torch.channels_last), requires_grad=False
            )
        else:
            self.weight = nn.Parameter(weight.float().contiguous(), requires_grad=False)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        if self.kernel_size > 1:
            out_len = (length + self.stride - 1) // self.stride
            pad = max(0, (out_len - 1) * self.stride + self.kernel_size - length)
            if pad:
                left = pad // 2
                x = F.pad(x, (left, pad - left), "constant", 0.0)
        if self.layout == "channels_last":
            return F.conv2d(x, self.weight, self.bias, stride=(1, self.stride), groups=self.groups)
        return F.conv1d(x, self.weight, self.bias, stride=self.stride, groups=self.groups)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class FoldedBlock(nn.Module):
    """:class:`~ecgcad.model.net1d.BasicBlock` with ``bn2``/``bn3`` folded and ``bn1`` as an affine."""

    def __init__(self, block: BasicBlock, layout: Layout) -> None:
        super().__init__()
        use_bn = block.use_bn
        self.layout: Layout = layout
        self.is_first_block = bool(block.is_first_block)
        self.has_pre_affine = use_bn and not self.is_first_block
        shape = (-1, 1, 1) if layout == "channels_last" else (-1, 1)
        if self.has_pre_affine:
            scale, shift = _bn_scale_shift(block.bn1)
            self.register_buffer("pre_scale", scale.float().reshape(shape))
            self.register_buffer("pre_shift", shift.float().reshape(shape))
        self.conv1 = FoldedConv(block.conv1, block.bn2 if use_bn else None, layout)
        self.conv2 = FoldedConv(block.conv2, block.bn3 if use_bn else None, layout)
        self.conv3 = FoldedConv(block.conv3, None, layout)
        self.se_fc1 = copy.deepcopy(block.se_fc1)
        self.se_fc2 = copy.deepcopy(block.se_fc2)
        self.downsample = bool(block.downsample)
        self.pool = int(block.max_pool.kernel_size) if block.downsample else 1
        grow = block.out_channels - block.in_channels
        self.pad_before = grow // 2
        self.pad_after = grow - grow // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if not self.is_first_block:
            if self.has_pre_affine:
                scale: torch.Tensor = self.pre_scale  # type: ignore[assignment]
                shift: torch.Tensor = self.pre_shift  # type: ignore[assignment]
                out = out * scale + shift
            out = _swish(out)
        out = _swish(self.conv1(out))
        out = _swish(self.conv2(out))
        out = self.conv3(out)

        se = out.mean(-1)
        if self.layout == "channels_last":
            se = se.flatten(1)
        se = torch.sigmoid(self.se_fc2(_swish(self.se_fc1(se))))
        se = se[:, :, None, None] if self.layout == "channels_last" else se[:, :, None]
        out = out * se

        identity = x
        if self.downsample:
            pad = self.pool - 1
            if pad:
                identity = F.pad(identity, (pad // 2, pad - pad // 2), "constant", 0.0)
            if self.layout == "channels_last":
                identity = F.max_pool2d(identity, kernel_size=(1, self.pool))
            else:
                identity = F.max_pool1d(identity, kernel_size=self.pool)
        if self.pad_before or self.pad_after:
            identity = _pad_channels(identity, self.pad_before, self.pad_after)
        return out + identity


def _pad_channels(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zero channels before and after dimension 1 (the reference pads dimension −2 of ``(B, C, L)``)."""
    parts = []
    if before:
        parts.append(x.new_zeros((x.shape[0], before, *x.shape[2:])))
    parts.append(x)
    if after:
        parts.append(x.new_zeros((x.shape[0], after, *x.shape[2:])))
    out = torch.cat(parts, dim=1)
    if x.dim() == 4:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class FoldedNet1D(nn.Module):
    """An inference-only ``Net1D``: same input ``(B, C, L)``, same logits, batch-norm folded.

    Parameters
    ----------
    net:
        The trained reference model (its weights are copied; it is not modified).
    layout:
        ``"ncl"`` or ``"channels_last"`` (see the module docstring).
    """

    def __init__(self, net: Net1D, layout: Layout = "ncl") -> None:
        super().__init__()
        if layout not in ("ncl", "channels_last"):
            raise ValueError(f"unknown layout {layout!r}")
        self.layout: Layout = layout
        self.first_conv = FoldedConv(net.first_conv, net.first_bn if net.use_bn else None, layout)
        self.blocks = nn.ModuleList(
            FoldedBlock(block, layout)  # type: ignore[arg-type]
            for stage in net.stage_list
            for block in stage.block_list  # type: ignore[union-attr]
        )
        self.dense = copy.deepcopy(net.dense)
        self.config = dict(net.config)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "channels_last":
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        out = _swish(self.first_conv(x))
        for block in self.blocks:
            out = block(out)
        features = out.mean(-1)
        if self.layout == "channels_last":
            features = features.flatten(1)
        return self.dense(features)


def fold_net1d(net: Net1D, layout: Layout = "ncl") -> FoldedNet1D:
    """The folded inference form of ``net`` (see :class:`FoldedNet1D`).

    Raises
    ------
    ValueError
        ``net`` is in training mode (folding uses the running statistics) or the layout is unknown.
    """
    if net.training:
        raise ValueError("fold_net1d needs a model in eval mode (batch-norm running statistics)")
    folded = FoldedNet1D(net, layout)
    return folded.to(next(net.parameters()).device)
