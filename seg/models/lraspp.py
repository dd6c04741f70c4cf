"""Lite R-ASPP (MobileNetV3 paper, section 6.3) on the MobileNetV3 encoder, as torchvision builds it.

The module names (``backbone.<i>``, ``classifier.cbr / scale / low_classifier / high_classifier``) are
torchvision's ``LRASPP``'s, so its ``lraspp_mobilenet_v3_large`` state dicts load key for key. The head reads the
encoder's C2 map (stride 8, the encoder's ``mid``) and its last map (``high``); there is no ASPP and no auxiliary
head.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from seg.models.backbone import check_output_stride


class LRASPPHead(nn.Module):
    """torchvision's ``LRASPPHead``: a 1x1 conv/BN/ReLU on the last map gated by its pooled sigmoid, upsampled to
    the stride-8 map and added to a linear classifier of that map."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """``forward(x)`` returns ``{"out": logits}`` at the input's height and width."""

    def __init__(self, backbone: nn.Module, num_classes: int, inter_channels: int = 128):
        super().__init__()
        self.backbone = backbone
        self.classifier = LRASPPHead(backbone.aux_channels, backbone.out_channels, num_classes, inter_channels)
        self.num_classes = num_classes

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at another output stride: only the encoder changes (the head has no rates)."""
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        _, mid, high = self.backbone(x)
        logits = self.classifier(mid, high)
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}
