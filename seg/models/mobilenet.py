"""torchvision's MobileNetV3-Large as a DeepLab / LR-ASPP encoder.

The encoder is torchvision's own ``mobilenet_v3_large(...).features``, kept as the same numbered children
(``0`` stem ... ``16`` last 1x1 conv), so that ImageNet weights load unchanged and torchvision's segmentation state
dicts (whose ``IntermediateLayerGetter`` names them ``backbone.0`` ... ``backbone.16``) map key for key.

The taps follow torchvision's ``_deeplabv3_mobilenetv3`` / ``_lraspp_mobilenetv3``: the blocks that stride
(``_is_cn``) start the stages C1..C4; ``high`` is the last layer (C5, 960 channels) and ``mid`` the output of the
C2 block (40 channels, stride 8: torchvision's auxiliary input and LR-ASPP's ``low``). ``low`` (DeepLabv3+'s
decoder input) is the last map at stride 4 (24 channels), the end of the stage as ResNet's ``layer1`` is.

Output stride: torchvision builds the segmentation encoder with ``dilated=True`` (C4 keeps stride 1 and its
depthwise convolutions take rate 2: output stride 16). Here the network is built undilated and re-strided in place
by ``stage_plan``, the rule the ResNets use, on the stages that start at C2, C3 and C4 (without multi-grid): OS16
is exactly torchvision's layout, OS8 also keeps C3 at stride 1 with rate 2 (C4 at rate 4), OS32 is the
classification network. Only the depthwise convolution of a block has a spatial kernel, so only its stride,
dilation and padding change; no parameter does, and no block's residual connection (decided by the configured
stride and channels, which stay) changes either.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn
from torchvision.models import mobilenetv3

from seg.models.backbone import load_backbone_weights, stage_plan

# name -> torchvision constructor; the ImageNet weights are in seg.models.backbone.IMAGENET_WEIGHTS
MOBILENETS = {"mobilenet_v3_large": mobilenetv3.mobilenet_v3_large}
STAGE_NAMES = ("C2", "C3", "C4")  # the stages set_output_stride strides or dilates (torchvision's names)


def _spatial_conv(block: nn.Module) -> nn.Conv2d:
    """The one convolution of an inverted-residual block with a kernel above 1x1: the depthwise one."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
    assert len(convs) == 1, f"expected one depthwise convolution in {type(block).__name__}, found {len(convs)}"
    return convs[0]


class TappedEncoder(nn.Sequential):
    """Layers run in order, returning ``(low, mid, out)``: the outputs of layers ``low_index`` (stride 4, the v3+
    decoder's) and ``aux_index`` (the auxiliary head's) beside the last one, the encoder interface of the heads."""

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low, mid = x, x
        for index, layer in enumerate(self):
            x = layer(x)
            if index == self.low_index:
                low = x
            if index == self.aux_index:
                mid = x
        return low, mid, x


class MobileNetV3Encoder(TappedEncoder):
    """torchvision's ``features`` (children ``0``..``16``). ``forward`` returns (stride-4, C2, C5) features."""

    def __init__(self, features: nn.Sequential, output_stride: int):
        super().__init__(*features)
        starts = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]  # C1..C4
        self.stage_bounds: List[Tuple[int, int]] = list(zip(starts[-3:], starts[-2:] + [len(features) - 1]))
        self.aux_index = starts[-3]  # C2, torchvision's stage_indices[-4]
        self.low_index = starts[-3] - 1  # the last block at stride 4
        self.low_level_channels = features[self.low_index].out_channels
        self.aux_channels = features[self.aux_index].out_channels
        self.out_channels = features[len(features) - 1].out_channels
        self.output_stride = 32
        self.set_output_stride(output_stride)

    def stages(self) -> Dict[str, List[nn.Module]]:
        """The blocks of C2, C3 and C4 (what ``set_output_stride`` changes), by torchvision's stage names."""
        return {name: [self[i] for i in range(start, end)]
                for name, (start, end) in zip(STAGE_NAMES, self.stage_bounds)}

    def set_output_stride(self, output_stride: int) -> None:
        """Re-stride and re-dilate the depthwise convolutions of C2-C4 in place; parameters are untouched."""
        stages = list(self.stages().values())
        plan = stage_plan(output_stride, [1], [len(blocks) for blocks in stages])
        for blocks, (stride, dilations) in zip(stages, plan):
            for unit_index, (block, dilation) in enumerate(zip(blocks, dilations)):
                conv = _spatial_conv(block)
                unit_stride = stride if unit_index == 0 else 1
                padding = (conv.kernel_size[0] - 1) // 2 * dilation  # torchvision's Conv2dNormActivation rule
                conv.stride, conv.dilation, conv.padding = (unit_stride,) * 2, (dilation,) * 2, (padding,) * 2
        self.output_stride = int(output_stride)



def build_mobilenet(name: str, output_stride: int = 16, pretrained: str = "none") -> MobileNetV3Encoder:
    """The encoder from torchvision's constructor; ``pretrained``: ``"imagenet"``, ``"none"`` or a state dict path."""
    net = MOBILENETS[name](weights=None)
    if pretrained not in (None, "none"):
        load_backbone_weights(net, name, pretrained)
    return MobileNetV3Encoder(net.features, output_stride)
