"""DeepLab v2's ASPP (Chen et al. 2017, section 3.3, "DeepLab-ASPP-L"), on the same encoders as DeepLabv3.

Four parallel 3x3 atrous convolutions go straight from the last feature map to class logits, and their logits are
summed: no 1x1 branch, no image pooling, no BatchNorm, no projection (those are DeepLabv3's). This is the ResNet-101
form of the released DeepLab v2 (``fc1_voc12_c0`` ... ``c3``: one 3x3 convolution with bias per rate); the VGG-16
form put fc6/fc7 (1024 channels) in each branch. The classifiers start from a normal distribution of std 0.01 and
zero biases, as the released model's and its PyTorch ports' do.

Rates: ASPP-L's 6, 12, 18, 24 at output stride 8 (the paper's stride). Other strides keep the same field of view
in input pixels, as ``model.aspp_rates``' default does (its OS16 rates doubled at OS8): rate x stride constant,
rounded, at least 1, so OS16 gives 3, 6, 9, 12 and OS32 2, 3, 4, 6. ``set_output_stride`` scales the configured
rates by the same rule (DeepLabV3's), so training at 16 and evaluating at 8 doubles them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from seg.models.backbone import check_output_stride
from seg.models.outputs import at_input_size

RATES_AT_OS8 = (6, 12, 18, 24)  # ASPP-L


def scale_rates(rates: Sequence[int], from_stride: int, to_stride: int) -> List[int]:
    """Rates configured at ``from_stride`` for ``to_stride``: the same field of view in input pixels."""
    return [max(1, round(r * from_stride / to_stride)) for r in rates]


def default_rates(output_stride: int) -> List[int]:
    return scale_rates(RATES_AT_OS8, 8, check_output_stride(output_stride))


def check_rates(rates: Sequence[int]) -> None:
    if (isinstance(rates, (str, bytes)) or not len(rates)
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates)):
        raise ValueError(f"aspp_rates must be a list of positive integers with head deeplabv2 (ASPP-L: 6, 12, 18, 24 "
                         f"at os 8), got {rates!r}")


class ASPPv2(nn.Module):
    """``convs.<i>``: one 3x3 atrous convolution (with bias) per rate, straight to the classes; logits summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int]):
        super().__init__()
        check_rates(rates)
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def get_rates(self) -> List[int]:
        return [conv.dilation[0] for conv in self.convs]

    def set_rates(self, rates: Sequence[int]) -> None:
        for conv, rate in zip(self.convs, rates):
            conv.dilation = (int(rate), int(rate))
            conv.padding = (int(rate), int(rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([conv(x) for conv in self.convs]).sum(0)


class DeepLabV2(nn.Module):
    """The encoder, ASPP-L (``aspp``), ``Dropout2d`` on the encoder output with ``classifier_dropout`` and the
    optional FCN auxiliary head on stage 3. ``forward(x)`` returns ``{"out": logits}`` (plus ``"aux"``) at the
    input's height and width."""

    def __init__(self, backbone: nn.Module, num_classes: int, rates: Optional[Sequence[int]] = None,
                 aux_head: Optional[nn.Module] = None, classifier_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.classifier_dropout = nn.Dropout2d(classifier_dropout) if classifier_dropout else nn.Identity()
        self.aspp = ASPPv2(backbone.out_channels, num_classes, rates or default_rates(backbone.output_stride))
        self.aux_head = aux_head
        self.num_classes = num_classes
        # As DeepLabV3: other strides derive their rates from these, so switching back gives them again exactly.
        self.configured_stride = backbone.output_stride
        self.configured_rates = self.aspp.get_rates()

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)
        self.aspp.set_rates(scale_rates(self.configured_rates, self.configured_stride, output_stride))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        _, mid, high = self.backbone(x)
        logits = self.aspp(self.classifier_dropout(high))
        aux: Optional[torch.Tensor] = None
        if self.aux_head is not None:
            aux = self.aux_head(mid)
        return at_input_size(x.shape[-2:], logits, aux)
