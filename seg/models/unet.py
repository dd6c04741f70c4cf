"""The dilated U-Net (``build_model("unet", n, head="unet_dilated")``; config preset ``model=unet_dilated``).

Ronneberger et al.'s U-Net with "same" padding and BatchNorm: five encoder stages of two 3x3 conv/BN/ReLU each
(64, 128, 256, 512, 1024 channels by default) with a 2x2 max-pool between them, the two deepest stages at dilation 2
and followed by Dropout 0.5 (U-Net's dropout "at the end of the contracting path"; the stage-4 output goes to the
skip and the pool through it, as in U-Net's own network), then four decoder steps of a 2x2 transposed convolution
(stride 2, half the channels), concatenation with the encoder map of that resolution and two 3x3 conv/BN/ReLU, and a
1x1 classifier. Dilation 2 doubles the reach of the deepest convolutions without another pooling: a receptive field
of 284 to 300 pixels (by position) instead of the undilated network's 188 to 204
(``scripts/receptive_field.py model=unet_dilated``).

There is no ResNet backbone: the encoder is the module ``backbone`` (so ``train.backbone_lr_mult`` and
``train.freeze_backbone`` apply to it), its output stride is 16 and fixed (four poolings), and it has no ImageNet
weights. Inputs whose sides are not multiples of 16 are resized (bilinear) up to the next multiple (at most 15
pixels more) and the logits resized back to the input size, as DeepLab resizes its stride-16 logits: every pooling
then halves exactly and the skips meet their upsampled maps at the same size. For multiples of 16 both resizes are
exact copies. Resizing rather than zero padding keeps the exported program free of size comparisons: padding to
``16 * ceil(side / 16)`` and cropping back makes torch.export guard on sizes it cannot prove for every height and
width, so format=export would fail.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from seg.errors import UserError

WIDTHS = (64, 128, 256, 512, 1024)
DILATIONS = (1, 1, 1, 2, 2)  # per encoder stage: the two deepest stages dilated
DROPOUT = 0.5
OUTPUT_STRIDE = 16  # four 2x2 max-pools: input sides are padded to a multiple of this
ENCODER = "unet"  # build_model's backbone name for the U-Net's own encoder


class StrideError(UserError, ValueError):
    pass


def check_unet(backbone: str, head: str, output_stride: int, multi_grid: Optional[Sequence[int]],
               aspp_rates: Optional[Sequence[int]], aux_loss: bool, pretrained: str,
               widths: Optional[Sequence[int]], dropout: float) -> None:
    """The arguments ``build_model`` takes for the dilated U-Net, and the rule that its encoder and head go
    together; a ``ValueError`` that starts with the argument's name."""
    if head != "unet_dilated":
        if backbone == ENCODER:
            raise ValueError(f"backbone {ENCODER} is the dilated U-Net's own encoder: head must be unet_dilated "
                             f"(model=unet_dilated), got {head!r}")
        if widths is not None:
            raise ValueError(f"unet_widths must be null with head {head} (it sets the dilated U-Net's widths), "
                             f"got {list(widths)!r}")
        return
    if backbone != ENCODER:
        raise ValueError(f"backbone must be {ENCODER} with head unet_dilated (the dilated U-Net has its own encoder, "
                         f"no ResNet; model=unet_dilated sets both), got {backbone!r}")
    if output_stride != OUTPUT_STRIDE:
        raise ValueError(f"output_stride must be {OUTPUT_STRIDE} with head unet_dilated (its four 2x2 max-pools fix "
                         f"it), got {output_stride!r}")
    if multi_grid is not None:
        raise ValueError(f"multi_grid must be null with head unet_dilated (its dilations are fixed: 2 in the two "
                         f"deepest stages), got {list(multi_grid)!r}")
    if aspp_rates is not None:
        raise ValueError(f"aspp_rates must be null with head unet_dilated (it has no ASPP), got {list(aspp_rates)!r}")
    if aux_loss:
        raise ValueError("aux_loss must be false with head unet_dilated (it has no auxiliary head)")
    if pretrained != "none":
        raise ValueError(f"pretrained must be none with head unet_dilated (no ImageNet weights exist for the U-Net's "
                         f"encoder; a real dataset's recipe asks for them: add backbone.pretrained=none), "
                         f"got {pretrained!r}")
    if widths is not None and (isinstance(widths, (str, bytes)) or len(widths) != len(WIDTHS) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        raise ValueError(f"unet_widths must be {len(WIDTHS)} positive integers (the encoder stages' channels, e.g. "
                         f"{list(WIDTHS)}) or null for those, got {widths!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"unet_dropout must be a number in [0, 1), got {dropout!r}")


def double_conv(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Two 3x3 conv/BN/ReLU ("same" padding) at ``dilation``."""
    layers: List[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers += [nn.Conv2d(channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNetEncoder(nn.Module):
    """The contracting path: ``blocks.0`` ... ``blocks.4``, a max-pool before each but the first; returns every
    stage's output (the skips and the bottleneck)."""

    def __init__(self, widths: Sequence[int] = WIDTHS, dropout: float = DROPOUT, in_channels: int = 3):
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2)
        self.blocks = nn.ModuleList()
        for c_in, c_out, dilation in zip([in_channels, *widths], widths, DILATIONS):
            stage = double_conv(c_in, c_out, dilation)
            if dilation > 1:
                stage.append(nn.Dropout(dropout))
            self.blocks.append(stage)
        self.out_channels = widths[-1]
        self.output_stride = OUTPUT_STRIDE

    def stages(self) -> Dict[str, List[nn.Module]]:
        """``{"stage1": [its block], ...}`` (the benchmark's and the receptive-field tool's view of the stages)."""
        return {f"stage{index}": [block] for index, block in enumerate(self.blocks, start=1)}

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features: List[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(x if index == 0 else self.pool(x))
            features.append(x)
        return features


class UpStep(nn.Module):
    """2x2 transposed convolution (stride 2) to half the channels, concatenation with the skip, two 3x3 convs."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        self.convs = double_conv(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([skip, self.up(x)], dim=1))


class DilatedUNet(nn.Module):
    """``forward(x)`` returns ``{"out": logits}`` at the input's height and width, any height and width."""

    def __init__(self, num_classes: int, widths: Sequence[int] = WIDTHS, dropout: float = DROPOUT,
                 in_channels: int = 3):
        super().__init__()
        widths = tuple(widths)
        self.backbone = UNetEncoder(widths, dropout, in_channels)
        self.decoder = nn.ModuleList(UpStep(deep, skip, skip) for deep, skip in zip(widths[:0:-1], widths[-2::-1]))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)
        self.num_classes = num_classes
        self.widths = widths

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Only 16 (the stride the four poolings fix): there is nothing to switch. A ``UserError``: evaluate,
        predict and export reach here with the ``os=`` a user gave for a trained U-Net."""
        if output_stride != OUTPUT_STRIDE:
            raise StrideError(f"output_stride must be {OUTPUT_STRIDE} for the dilated U-Net (its four 2x2 max-pools "
                              f"fix it: os=16 or unset; the benchmark's eval_os=16), got {output_stride!r}")

    @staticmethod
    def working_size(height: int, width: int) -> Tuple[int, int]:
        """The size the network runs at: each side rounded up to a multiple of the output stride (16)."""
        return (height + 15) // 16 * 16, (width + 15) // 16 * 16

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        height, width = x.shape[-2], x.shape[-1]
        features = self.backbone(F.interpolate(x, size=self.working_size(height, width), mode="bilinear",
                                               align_corners=False))
        y = features[-1]
        for index, step in enumerate(self.decoder):
            y = step(y, features[-2 - index])
        return {"out": F.interpolate(self.classifier(y), size=(height, width), mode="bilinear", align_corners=False)}
