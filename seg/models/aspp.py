"""Atrous Spatial Pyramid Pooling (DeepLabv3, section 3.3).

The module layout (``convs.0`` 1x1, ``convs.1-3`` atrous 3x3, ``convs.4`` image pooling, ``project``) matches
torchvision's ``ASPP`` so that its state dicts map one to one. Other projects' variants are arguments: the width
(``out_channels``; mmsegmentation's D8 heads use 512), a 3x3 projection (``projection_kernel=3``, mmsegmentation's
``bottleneck``) and depthwise-separable 3x3 convolutions (``separable``, the DeepLabv3+ paper's and mmsegmentation's
``DepthwiseSeparableASPPHead``; with ``depthwise_bn_relu=False``, smp's ``SeparableConv2d``).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Rates at output stride 16 (the paper's); other strides scale them: OS8 doubles, OS32 halves.
RATES_AT_OS16 = (6, 12, 18)


def default_aspp_rates(output_stride: int) -> List[int]:
    return [r * 16 // output_stride for r in RATES_AT_OS16]


def check_aspp_rates(rates: Sequence[int]) -> None:
    if (isinstance(rates, (str, bytes)) or len(rates) != 3
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates)):
        raise ValueError(f"aspp_rates must be three positive integers, got {rates!r}")


PROJECTION_KERNELS = (1, 3)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 groups: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups,
                  bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def separable_conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1,
                           depthwise_bn_relu: bool = True) -> nn.Sequential:
    """A depthwise 3x3 conv then a pointwise 1x1 conv, each followed by BN and ReLU, or (``depthwise_bn_relu=False``)
    with BN and ReLU after the pointwise conv only.

    The first: a depthwise conv/BN/ReLU (``.0``) and a pointwise conv/BN/ReLU (``.1``), as mmcv's
    ``DepthwiseSeparableConvModule`` (mmsegmentation's DeepLabV3+) and the DeepLabv3+ paper's Xception build them.
    The second: ``(depthwise, pointwise)`` (``.0.0``, ``.0.1``), BN (``.1``), ReLU, as segmentation_models_pytorch's
    ``SeparableConv2d`` followed by its BN and ReLU.
    """
    if not depthwise_bn_relu:
        depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels,
                              bias=False)
        return nn.Sequential(nn.Sequential(depthwise, nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                             nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    return nn.Sequential(conv_bn_relu(in_channels, in_channels, 3, dilation, groups=in_channels),
                         conv_bn_relu(in_channels, out_channels))


def conv3x3_bn_relu(in_channels: int, out_channels: int, dilation: int = 1, separable: bool = False,
                    depthwise_bn_relu: bool = True) -> nn.Sequential:
    """A 3x3 conv/BN/ReLU, or its depthwise-separable form (``separable_conv_bn_relu``)."""
    if separable:
        return separable_conv_bn_relu(in_channels, out_channels, dilation, depthwise_bn_relu)
    return conv_bn_relu(in_channels, out_channels, 3, dilation)


def check_projection_kernel(kernel_size: int) -> None:
    if isinstance(kernel_size, bool) or kernel_size not in PROJECTION_KERNELS:
        raise ValueError(f"aspp_projection_kernel must be one of {list(PROJECTION_KERNELS)}, got {kernel_size!r}")


class ASPPPooling(nn.Sequential):
    """Global average pool -> 1x1 conv -> BN -> ReLU, broadcast back to the feature size.

    In training mode a batch of one image gives BatchNorm a single value per channel, which it refuses (and
    which carries no batch statistics anyway). Such batches are normalised with the running statistics, so
    training with batch size 1 per device works and the branch keeps its signal; larger batches use batch
    statistics as usual.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = self[1](self[0](x))
        bn = self[2]
        if self.training and pooled.shape[0] == 1:
            pooled = F.batch_norm(pooled, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            pooled = bn(pooled)
        # Upsampling a 1x1 map is a broadcast: expand() is exact and needs no interpolation kernel.
        return self[3](pooled).expand(-1, -1, size[0], size[1])


def _atrous_conv(branch: nn.Module) -> nn.Conv2d:
    """The dilated convolution of a 3x3 branch: its first (the depthwise one of a separable branch)."""
    return next(m for m in branch.modules() if isinstance(m, nn.Conv2d))


class ASPP(nn.Module):
    """The branches' outputs are concatenated in the order 1x1, atrous 3x3 (by rate), image pooling, then projected
    to ``out_channels``: a 1x1 conv/BN/ReLU (the paper's, torchvision's) or a 3x3 one (``projection_kernel=3``;
    separable too with ``separable``), followed by dropout. ``depthwise_bn_relu``: see ``separable_conv_bn_relu``."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256, dropout: float = 0.1,
                 projection_kernel: int = 1, separable: bool = False, depthwise_bn_relu: bool = True):
        super().__init__()
        check_aspp_rates(rates)
        check_projection_kernel(projection_kernel)
        branches = [conv_bn_relu(in_channels, out_channels)]
        branches += [conv3x3_bn_relu(in_channels, out_channels, rate, separable, depthwise_bn_relu) for rate in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        joined = len(branches) * out_channels
        projection = (conv_bn_relu(joined, out_channels) if projection_kernel == 1
                      else conv3x3_bn_relu(joined, out_channels, separable=separable,
                                           depthwise_bn_relu=depthwise_bn_relu))
        # Flattened, so that the 1x1 projection keeps torchvision's keys (project.0 conv, project.1 BN).
        self.project = nn.Sequential(*projection, nn.Dropout(dropout))

    def get_rates(self) -> List[int]:
        return [_atrous_conv(self.convs[i]).dilation[0] for i in (1, 2, 3)]

    def set_rates(self, rates: Sequence[int]) -> None:
        for i, rate in zip((1, 2, 3), rates):
            conv = _atrous_conv(self.convs[i])
            conv.dilation = (int(rate), int(rate))
            conv.padding = (int(rate), int(rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for branch in self.convs:
            outputs.append(branch(x))
        return self.project(torch.cat(outputs, dim=1))
