"""VainF/DeepLabV3Plus-Pytorch's MobileNetV2 encoder (``network/backbone/mobilenetv2.py``), on torchvision's blocks.

VainF's network has torchvision's MobileNetV2 parameters key for key (it loads torchvision's ImageNet file
``mobilenet_v2-b0353104.pth``), so the blocks here are torchvision's ``mobilenet_v2().features[:18]`` (the last
1x1 conv to 1280 channels dropped, as VainF's ``_segm_mobilenet`` does). Its forward differs from torchvision's in
two ways that change every logit, and this encoder computes them as VainF does:

- the stem's 3x3 convolution has no padding (its ``ConvBNReLU`` pads 0): a 64-pixel input gives 31, not 32;
- an inverted-residual block pads its input (``fixed_padding``: ``dilation`` on each side) before the whole
  block, the 1x1 expansion included, and its depthwise convolution pads nothing. The border of the expanded map
  is then ``ReLU6(BN(0))`` rather than torchvision's zeros.

Neither torchvision's nor timm's ``mobilenetv2_100`` (same tensors, "same" padding after the expansion) computes
that, so only the tensors come from torchvision. Output stride: VainF dilates the stages whose stride would pass
it, the first unit at the previous rate; that is ``stage_plan`` with ``contract_dilation`` on the three stages
that start with a stride-2 block (32, 64+96 and 160+320 channels), with no multi-grid. ``forward`` returns the
stride-4 map (24 channels, VainF's ``low_level_features``), the end of the 96-channel stage (stride 16 at OS32:
the auxiliary head's input, which VainF does not have) and the last block's output (320 channels, its
``high_level_features``).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenetv2

from seg.models.backbone import load_backbone_weights, stage_plan
from seg.models.mobilenet import TappedEncoder

NAME = "vainf_mobilenetv2"  # build_model's backbone name
BLOCKS = 18  # stem + 17 inverted-residual blocks; torchvision's features.18 (1x1 to 1280) is not part of it
LOW_INDEX = 3  # VainF's low_level_features = features[0:4]
AUX_INDEX = 13  # the last block of the 96-channel stage


class PaddedInvertedResidual(nn.Module):
    """torchvision's ``InvertedResidual`` (its ``conv`` and residual rule) with VainF's padding: the input padded by
    the dilation on each side before the expansion, the depthwise convolution unpadded."""

    def __init__(self, block: mobilenetv2.InvertedResidual):
        super().__init__()
        self.conv = block.conv
        self.use_res_connect: bool = bool(block.use_res_connect)
        self.dilation = 1
        self.depthwise().padding = (0, 0)

    def depthwise(self) -> nn.Conv2d:
        return [m for m in self.conv.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1][0]

    def set_stride(self, stride: int, dilation: int) -> None:
        conv = self.depthwise()
        conv.stride, conv.dilation = (stride, stride), (dilation, dilation)
        self.dilation = int(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, [self.dilation, self.dilation, self.dilation, self.dilation]))
        return x + out if self.use_res_connect else out


class VainFMobileNetV2Encoder(TappedEncoder):
    """Children ``0`` (stem) .. ``17`` as VainF's ``features[0:18]``. ``forward`` returns (stride-4, stage-96, last)."""

    def __init__(self, features: nn.Sequential, output_stride: int):
        stem = features[0]
        stem[0].padding = (0, 0)
        super().__init__(stem, *[PaddedInvertedResidual(block) for block in features[1:BLOCKS]])
        starts = [i for i in range(1, BLOCKS) if self[i].depthwise().stride[0] == 2]  # 24, 32, 64, 160 channels
        self.stage_bounds: List[Tuple[int, int]] = list(zip(starts[-3:], starts[-2:] + [BLOCKS]))
        self.low_level_channels = self[LOW_INDEX].conv[-1].num_features
        self.aux_channels = self[AUX_INDEX].conv[-1].num_features
        self.out_channels = self[BLOCKS - 1].conv[-1].num_features
        self.low_index, self.aux_index = LOW_INDEX, AUX_INDEX  # attributes: TorchScript reads no module globals
        self.output_stride = 32
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """VainF's strides and dilations for ``output_stride`` (see the module docstring); no parameter changes."""
        units = [end - start for start, end in self.stage_bounds]
        plan = stage_plan(output_stride, None, units, contract_dilation=True)
        for (start, _), (stride, dilations) in zip(self.stage_bounds, plan):
            for offset, dilation in enumerate(dilations):
                self[start + offset].set_stride(stride if offset == 0 else 1, dilation)
        self.output_stride = int(output_stride)



def build_vainf_mobilenetv2(output_stride: int = 16, pretrained: str = "none") -> VainFMobileNetV2Encoder:
    """The encoder from torchvision's ``mobilenet_v2``; ``pretrained``: ``"imagenet"`` (torchvision's weights, the
    file VainF loads), ``"none"`` or the path of a torchvision ``mobilenet_v2`` state dict."""
    net = mobilenetv2.mobilenet_v2(weights=None)
    if pretrained not in (None, "none"):
        load_backbone_weights(net, NAME, pretrained)
    return VainFMobileNetV2Encoder(net.features, output_stride)
