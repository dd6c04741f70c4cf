"""Atrous Spatial Pyramid Pooling (DeepLabv3, section 3.3).

The module layout (``convs.0`` 1x1, ``convs.1-3`` atrous 3x3, ``convs.4`` image pooling, ``project``) matches
torchvision's ``ASPP`` so that its state dicts map one to one.
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


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


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


class ASPP(nn.Module):
    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256, dropout: float = 0.1):
        super().__init__()
        check_aspp_rates(rates)
        branches = [conv_bn_relu(in_channels, out_channels)]
        branches += [conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def get_rates(self) -> List[int]:
        return [self.convs[i][0].dilation[0] for i in (1, 2, 3)]

    def set_rates(self, rates: Sequence[int]) -> None:
        for i, rate in zip((1, 2, 3), rates):
            conv = self.convs[i][0]
            conv.dilation = (int(rate), int(rate))
            conv.padding = (int(rate), int(rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for branch in self.convs:
            outputs.append(branch(x))
        return self.project(torch.cat(outputs, dim=1))
