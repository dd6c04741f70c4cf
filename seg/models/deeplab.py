"""DeepLabv3 and DeepLabv3+ segmentation models."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg.models import timm_backbone
from seg.models.aspp import ASPP, check_aspp_rates, conv_bn_relu, default_aspp_rates
from seg.models.backbone import (
    build_backbone,
    check_backbone,
    check_multi_grid,
    check_output_stride,
    fetch_imagenet_weights,
)

HEADS = ("deeplabv3", "deeplabv3plus")


class DeepLabV3Decoder(nn.Module):
    """DeepLabv3: one 3x3 conv/BN/ReLU on the ASPP output (torchvision's ``classifier.1-3``)."""

    def __init__(self, channels: int = 256):
        super().__init__()
        self.block = conv_bn_relu(channels, channels, 3)

    def forward(self, features: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        return self.block(features)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+: stage-1 features reduced to 48 channels, joined with the upsampled ASPP output, two 3x3 convs."""

    def __init__(self, low_level_channels: int, channels: int = 256, low_level_reduced: int = 48):
        super().__init__()
        self.reduce = conv_bn_relu(low_level_channels, low_level_reduced)
        self.fuse = nn.Sequential(
            conv_bn_relu(channels + low_level_reduced, channels, 3),
            conv_bn_relu(channels, channels, 3),
        )

    def forward(self, features: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        features = F.interpolate(features, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([features, self.reduce(low_level)], dim=1))


class FCNHead(nn.Sequential):
    """Auxiliary head on stage 3 (torchvision's ``FCNHead`` layout)."""

    def __init__(self, in_channels: int, num_classes: int):
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class DeepLabV3(nn.Module):
    """``forward(x)`` returns ``{"out": logits}`` (plus ``"aux"``) at the input's height and width."""

    def __init__(self, backbone: nn.Module, aspp: ASPP, decoder: nn.Module, num_classes: int,
                 aux_head: Optional[nn.Module] = None, channels: int = 256):
        super().__init__()
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.aux_head = aux_head
        self.num_classes = num_classes
        # The ASPP rates as configured and the stride they were configured for: every other stride derives its
        # rates from these, so switching strides and back gives the configured rates again (no rounding drift).
        self.configured_stride = backbone.output_stride
        self.configured_rates = aspp.get_rates()

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at another output stride (the paper trains at 16 and evaluates at 8).

        The backbone's strides and dilations change, and the ASPP rates scale inversely with the stride.
        """
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)  # first: an encoder that cannot switch leaves all unchanged
        scale = self.configured_stride / output_stride
        self.aspp.set_rates([max(1, round(r * scale)) for r in self.configured_rates])

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        size = x.shape[-2:]
        low, mid, high = self.backbone(x)
        logits = self.classifier(self.decoder(self.aspp(high), low))
        result = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}
        if self.aux_head is not None:
            aux = self.aux_head(mid)
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result


def check_arguments(backbone: str, num_classes: Optional[int] = None, output_stride: int = 16,
                    multi_grid: Optional[Sequence[int]] = (1, 2, 4), aspp_rates: Optional[Sequence[int]] = None,
                    head: str = "deeplabv3") -> None:
    """Raise a ``ValueError`` that starts with the name of the first bad argument of ``build_model``.

    ``build_model`` calls this first; ``seg.config`` calls it on a configuration before any work and words the
    error in config keys, so each rule is written once. ``num_classes=None`` skips that check. A timm encoder
    (``"timm:<name>"``) is checked against timm's model list, and built on the meta device to check that it has
    feature maps at ``output_stride`` and, for a multi-grid, ResNet stages.
    """
    timm = timm_backbone.is_timm(backbone)
    if timm:
        timm_backbone.check_timm_name(backbone[len(timm_backbone.PREFIX):])
    else:
        check_backbone(backbone)
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_output_stride(output_stride)
    if multi_grid is not None:
        check_multi_grid(multi_grid)
    if timm:
        timm_backbone.check_timm_arguments(backbone[len(timm_backbone.PREFIX):], output_stride, multi_grid)
    if aspp_rates is not None:
        check_aspp_rates(aspp_rates)
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")


def build_encoder(backbone: str, output_stride: int = 16, multi_grid: Optional[Sequence[int]] = (1, 2, 4),
                  pretrained: str = "none") -> nn.Module:
    """The encoder ``backbone`` names: a built-in ResNet (``"resnet50"``) or a timm model (``"timm:<name>"``).

    ``multi_grid=None``: no multi-grid (a built-in ResNet then uses the stage rate in every unit).
    """
    if timm_backbone.is_timm(backbone):
        return timm_backbone.TimmBackbone(backbone[len(timm_backbone.PREFIX):], output_stride, multi_grid,
                                          pretrained)
    return build_backbone(backbone, output_stride, (1,) if multi_grid is None else multi_grid, pretrained)


def fetch_backbone_weights(backbone: str) -> None:
    """Bring the ImageNet weights of ``backbone`` into their cache, or stop with what to do (see the encoders)."""
    if timm_backbone.is_timm(backbone):
        timm_backbone.fetch_imagenet_weights(backbone[len(timm_backbone.PREFIX):])
    else:
        fetch_imagenet_weights(backbone)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm of ``model`` as a SyncBatchNorm (DDP on CUDA).

    A timm encoder goes through timm's converter: torch's turns timm's ``BatchNormAct2d`` (normalisation and
    activation in one module: EfficientNet, MobileNetV3, Xception) into a plain ``SyncBatchNorm`` and so drops
    the activation.
    """
    if any(isinstance(module, timm_backbone.TimmBackbone) for module in model.modules()):
        return timm_backbone.import_timm().layers.convert_sync_batchnorm(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def build_model(backbone: str, num_classes: int, output_stride: int = 16,
                multi_grid: Optional[Sequence[int]] = (1, 2, 4), aspp_rates: Optional[Sequence[int]] = None,
                head: str = "deeplabv3", aux_loss: bool = False, pretrained: str = "none",
                dropout: float = 0.1) -> DeepLabV3:
    """Build DeepLabv3 / v3+ on an atrous ResNet or a timm encoder (``backbone="timm:<timm model name>"``).

    ``pretrained`` applies to the backbone: ``"imagenet"`` (torchvision's weights and cache; timm's for a timm
    encoder), ``"none"``, or a path to a local state dict of the classification network. Whole-model weights are
    loaded afterwards with ``load_weights``.
    """
    check_arguments(backbone, num_classes, output_stride, multi_grid, aspp_rates, head)
    rates = list(aspp_rates) if aspp_rates else default_aspp_rates(output_stride)
    trunk = build_encoder(backbone, output_stride, multi_grid, pretrained)
    aspp = ASPP(trunk.out_channels, rates, dropout=dropout)
    if head == "deeplabv3plus":
        decoder: nn.Module = DeepLabV3PlusDecoder(trunk.low_level_channels)
    else:
        decoder = DeepLabV3Decoder()
    aux_head = FCNHead(trunk.aux_channels, num_classes) if aux_loss else None
    return DeepLabV3(trunk, aspp, decoder, num_classes, aux_head)
