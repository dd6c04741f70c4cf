"""DeepLabv3's cascaded model ("going deeper with atrous convolution", section 3.2, Tables 1-3).

Copies of the ResNet's last block (block4: three bottleneck units for ResNet-50/101, two basic units for
ResNet-18/34) are stacked after it as block5, block6, ... and a 1x1 classifier reads the last one. In the paper
every block but the last ends with a stride-2 convolution; at an output stride below that depth the strides are
replaced by atrous convolution, so each block runs at twice the rate of the one before (OS16: block4 to block7 at
rates 2, 4, 8, 16), and the multi-grid is applied inside every block: unit ``i`` of a block at rate ``r`` runs at
``r * multi_grid[i]`` ("Multi_Grid = (r1, r2, r3) as the unit rates for the three convolutional layers within
block4 to block7"). ``cascade_plan`` is that rule as a pure function; ``backbone.stage_plan`` gives block4's.

The new blocks start from torchvision's ResNet initialisation (He-normal convolutions, BatchNorm at 1 and 0), not
from block4's weights: the paper does not say, TensorFlow's research/deeplab code builds block4 only (its
``resnet_v1_beta`` takes ``multi_grid`` as block4's ``unit_rate``s and has no block5), and block5's first unit
cannot take block4's first unit's weights anyway (it reads 2048 channels, not 1024, through an identity shortcut,
since its stride is 1 and its width unchanged). ImageNet weights therefore cover the backbone, as with every head.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torchvision.models import resnet

from seg.models.backbone import BACKBONES, _dilated_convs, check_output_stride, stage_plan
from seg.models.outputs import at_input_size

# block5 .. block(4 + n): 0 is the paper's "block4" column (the ResNet and a 1x1 classifier), 3 its deepest (block7).
# A fourth block would run at 32 x the grid at OS16: every tap but the centre of its 3x3 convs falls outside a
# 33x33 map (a 513 input), the degenerate case section 3.3 warns of, and the paper never tries it.
CASCADE_BLOCKS = (0, 1, 2, 3)


def check_cascade_blocks(blocks: int) -> None:
    if isinstance(blocks, bool) or blocks not in CASCADE_BLOCKS:
        raise ValueError(f"cascade_blocks must be one of {list(CASCADE_BLOCKS)} (block5 to block7 after block4, as "
                         f"in the DeepLabv3 paper), got {blocks!r}")


def check_cascade_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {list(BACKBONES)} with head cascade (its blocks are copies of the "
                         f"built-in ResNets' last stage), got {backbone!r}")


def cascade_plan(output_stride: int, multi_grid: Optional[Sequence[int]], units: int, blocks: int) -> List[List[int]]:
    """The dilation of every unit of block4, block5, ... block(4 + blocks) at ``output_stride``.

    Block4's rate is ``stage_plan``'s (1 at OS32, 2 at OS16, 4 at OS8); each further block doubles it (the stride it
    would have in the paper, replaced by dilation); unit ``i`` multiplies its block's rate by
    ``multi_grid[i % len(multi_grid)]`` (``None``: 1).
    """
    check_output_stride(output_stride)
    rate = stage_plan(output_stride, None, [1, 1, 1])[-1][1][0]
    grid = [int(multi_grid[i % len(multi_grid)]) if multi_grid else 1 for i in range(units)]
    return [[rate * 2 ** block * g for g in grid] for block in range(blocks + 1)]


def copy_of_last_stage(stage: nn.Sequential) -> nn.Sequential:
    """A stage of as many units of the same kind and width as ``stage``, freshly initialised, stride 1, identity
    shortcuts (torchvision's ``_make_layer`` for ``inplanes == planes * expansion``)."""
    unit = type(stage[0])
    width = stage[-1].conv1.out_channels if unit is resnet.Bottleneck else stage[-1].conv2.out_channels
    channels = width * unit.expansion
    units = [unit(channels, width) for _ in range(len(stage))]
    for module in (m for u in units for m in u.modules()):  # torchvision ResNet's own initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return nn.Sequential(*units)


class CascadeDeepLab(nn.Module):
    """The backbone (block1-4), ``cascade.block5`` ... , a 1x1 classifier (``Dropout2d`` before it with
    ``classifier_dropout``) and the optional FCN auxiliary head on stage 3. ``forward(x)`` returns
    ``{"out": logits}`` (plus ``"aux"``) at the input's height and width."""

    def __init__(self, backbone: nn.Module, num_classes: int, blocks: int = 3, aux_head: Optional[nn.Module] = None,
                 classifier_dropout: float = 0.0):
        super().__init__()
        check_cascade_blocks(blocks)
        self.backbone = backbone
        self.cascade = nn.Sequential(OrderedDict(
            (f"block{5 + i}", copy_of_last_stage(backbone.layer4)) for i in range(blocks)))
        self.classifier_dropout = nn.Dropout2d(classifier_dropout) if classifier_dropout else nn.Identity()
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1)
        self.aux_head = aux_head
        self.num_classes = num_classes
        self.set_output_stride(backbone.output_stride)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def rates(self) -> List[List[int]]:
        """The dilation of every unit of block4, block5, ... as built (read from the convolutions)."""
        stages = [self.backbone.layer4, *self.cascade]
        return [[_dilated_convs(unit)[0].dilation[0] for unit in stage] for stage in stages]

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at another output stride: the backbone as DeepLabV3's, block5+ at the doubled rates
        of ``cascade_plan``."""
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)
        plan = cascade_plan(output_stride, self.backbone.multi_grid, len(self.backbone.layer4), len(self.cascade))
        for block, dilations in zip(self.cascade, plan[1:]):
            for unit, dilation in zip(block, dilations):
                for conv in _dilated_convs(unit):
                    conv.dilation = (dilation, dilation)
                    conv.padding = (dilation, dilation)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        _, mid, high = self.backbone(x)
        logits = self.classifier(self.classifier_dropout(self.cascade(high)))
        aux: Optional[torch.Tensor] = None
        if self.aux_head is not None:
            aux = self.aux_head(mid)
        return at_input_size(x.shape[-2:], logits, aux)
