"""A minimal re-implementation of mmsegmentation's DeepLabV3 / DeepLabV3+ R18/R50/R101-D8 and R101-D16-MG124, written
from its source.

mmsegmentation cannot be installed in the test environment (mmcv needs compiled ops), so the parity tests of
``seg.models.layouts.mmseg`` run against this instead. It follows, module by module and name by name, so that its
``state_dict()`` has mmsegmentation's real keys:

- mmseg/models/backbones/resnet.py: ``ResNetV1c`` (``deep_stem=True``: ``stem.0-8``; ``ResNet``'s ``conv1``,
  ``bn1`` otherwise; ``Bottleneck`` of style ``pytorch``, its stride in ``conv2``; norms named ``bn1``-``bn3``;
  ``BasicBlock`` for depth 18, its ``conv1`` strided and dilated, its ``conv2`` neither), with
  mmseg/models/utils/res_layer.py's ``ResLayer`` (``contract_dilation``: the first block of a dilated stage at
  ``dilation // 2``; ``multi_grid``, last stage only: block ``i`` at ``multi_grid[i]`` itself, the stage's
  dilation not applied; ``downsample.0/1``);
  D8: ``strides=(1, 2, 1, 1)``, ``dilations=(1, 1, 2, 4)``; D16-MG124: ``strides=(1, 2, 2, 1)``,
  ``dilations=(1, 1, 1, 2)``, ``multi_grid=(1, 2, 4)``, ASPP ``dilations=(1, 6, 12, 18)``
  (configs/deeplabv3(plus)/deeplabv3(plus)_r101-d16-mg124_512x1024_40k_cityscapes.py); R18-D8: ``depth=18``, heads
  of ``channels=128`` (``c1_in_channels=64``, ``c1_channels=12`` in V3+), auxiliary head 256 -> 64
  (deeplabv3(plus)_r18-d8_512x1024_80k_cityscapes.py);
- mmcv/cnn/bricks/conv_module.py ``ConvModule`` (``conv`` without bias before a norm, ``bn``, ``activate``) and
  depthwise_separable_conv_module.py ``DepthwiseSeparableConvModule`` (``depthwise_conv``, ``pointwise_conv``,
  both with BN and ReLU);
- mmseg/models/decode_heads/decode_head.py (``Dropout2d(dropout_ratio)`` then ``conv_seg``), aspp_head.py
  (``image_pool`` first, then ``aspp_modules``, concatenated and joined by a 3x3 ``bottleneck``), sep_aspp_head.py
  (separable ``aspp_modules`` and ``bottleneck``, ``c1_bottleneck`` to 48 channels, ``sep_bottleneck``),
  fcn_head.py (``convs``; ``concat_input=False``);
- mmseg/models/segmentors/encoder_decoder.py: logits resized to the input size (bilinear, ``align_corners=False``).

Only what these configs (and configs/_base_/models/deeplabv3_r50-d8.py, deeplabv3plus_r50-d8.py) use is written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvModule(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, padding=0, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, padding=0, dilation=1):
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, padding, dilation, groups=in_channels)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResLayer(nn.Sequential):
    def __init__(self, block, inplanes, planes, num_blocks, stride=1, dilation=1, multi_grid=None,
                 contract_dilation=False):
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        if multi_grid is None:
            first_dilation = dilation // 2 if dilation > 1 and contract_dilation else dilation
        else:
            first_dilation = multi_grid[0]
        layers = [block(inplanes, planes, stride, first_dilation, downsample)]
        layers += [block(planes * block.expansion, planes, 1, dilation if multi_grid is None else multi_grid[i])
                   for i in range(1, num_blocks)]
        super().__init__(*layers)


class ResNet(nn.Module):
    """``deep_stem=False``: mmseg's ``ResNet`` (the ``r50b`` / ``r101b`` configs: ``conv1``, ``bn1``, ``relu``)."""

    arch_settings = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}

    def __init__(self, depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True,
                 stem_channels=64, deep_stem=False, multi_grid=None):
        super().__init__()
        half = stem_channels // 2
        self.deep_stem = deep_stem
        if deep_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels),
                nn.ReLU(inplace=True))
        else:
            self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_channels)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.res_layers = []
        block, stage_blocks = self.arch_settings[depth]
        for i, num_blocks in enumerate(stage_blocks):
            planes = 64 * 2 ** i
            stage_multi_grid = multi_grid if i == len(stage_blocks) - 1 else None
            self.add_module(f"layer{i + 1}", ResLayer(block, inplanes, planes, num_blocks, strides[i], dilations[i],
                                                      stage_multi_grid, contract_dilation))
            self.res_layers.append(f"layer{i + 1}")
            inplanes = planes * block.expansion

    def forward(self, x):
        x = self.maxpool(self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x))))
        outs = []
        for name in self.res_layers:
            x = getattr(self, name)(x)
            outs.append(x)
        return tuple(outs)


class ResNetV1c(ResNet):
    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, **kwargs)


class BaseDecodeHead(nn.Module):
    def __init__(self, in_channels, channels, num_classes, in_index=-1, dropout_ratio=0.1):
        super().__init__()
        self.in_channels, self.channels, self.in_index = in_channels, channels, in_index
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def cls_seg(self, feat):
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)


class ASPPModule(nn.ModuleList):
    def __init__(self, dilations, in_channels, channels):
        super().__init__()
        self.dilations, self.in_channels, self.channels = dilations, in_channels, channels
        for dilation in dilations:
            self.append(ConvModule(in_channels, channels, 1 if dilation == 1 else 3, dilation=dilation,
                                   padding=0 if dilation == 1 else dilation))

    def forward(self, x):
        return [module(x) for module in self]


class DepthwiseSeparableASPPModule(ASPPModule):
    def __init__(self, dilations, in_channels, channels):
        super().__init__(dilations, in_channels, channels)
        for i, dilation in enumerate(self.dilations):
            if dilation > 1:
                self[i] = DepthwiseSeparableConvModule(in_channels, channels, 3, dilation=dilation, padding=dilation)


class ASPPHead(BaseDecodeHead):
    def __init__(self, dilations=(1, 12, 24, 36), **kwargs):
        super().__init__(**kwargs)
        self.dilations = dilations
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(self.in_channels, self.channels, 1))
        self.aspp_modules = ASPPModule(dilations, self.in_channels, self.channels)
        self.bottleneck = ConvModule((len(dilations) + 1) * self.channels, self.channels, 3, padding=1)

    def aspp(self, x):
        outs = [resize(self.image_pool(x), x.shape[2:])]
        outs.extend(self.aspp_modules(x))
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs):
        return self.cls_seg(self.aspp(inputs[self.in_index]))


class DepthwiseSeparableASPPHead(ASPPHead):
    def __init__(self, c1_in_channels=256, c1_channels=48, **kwargs):
        super().__init__(**kwargs)
        self.aspp_modules = DepthwiseSeparableASPPModule(self.dilations, self.in_channels, self.channels)
        self.bottleneck = DepthwiseSeparableConvModule((len(self.dilations) + 1) * self.channels, self.channels, 3,
                                                       padding=1)
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(self.channels + c1_channels, self.channels, 3, padding=1),
            DepthwiseSeparableConvModule(self.channels, self.channels, 3, padding=1))

    def forward(self, inputs):
        output = self.aspp(inputs[self.in_index])
        c1_output = self.c1_bottleneck(inputs[0])
        output = torch.cat([resize(output, c1_output.shape[2:]), c1_output], dim=1)
        return self.cls_seg(self.sep_bottleneck(output))


class FCNHead(BaseDecodeHead):
    def __init__(self, num_convs=1, kernel_size=3, concat_input=False, **kwargs):
        super().__init__(**kwargs)
        assert num_convs == 1 and not concat_input, "only the D8 configs' auxiliary head is written here"
        self.convs = nn.Sequential(ConvModule(self.in_channels, self.channels, kernel_size,
                                              padding=kernel_size // 2))

    def forward(self, inputs):
        return self.cls_seg(self.convs(inputs[self.in_index]))


class EncoderDecoder(nn.Module):
    """``deeplabv3_r{18,50,101}-d8`` (``plus=False``) or ``deeplabv3plus_r{18,50,101}-d8``, or their
    ``r101-d16-mg124`` (``d16_mg124=True``), with or without the auxiliary head; ``forward`` returns the logits at
    the input size (and the auxiliary head's, if any)."""

    def __init__(self, depth=50, num_classes=21, plus=False, aux=True, deep_stem=True, d16_mg124=False):
        super().__init__()
        if d16_mg124:
            self.backbone = ResNet(depth, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), deep_stem=deep_stem,
                                   multi_grid=(1, 2, 4))
        else:
            self.backbone = ResNet(depth, deep_stem=deep_stem)
        small = depth == 18  # the r18-d8 configs' narrower heads
        head = dict(in_channels=512 if small else 2048, in_index=3, channels=128 if small else 512,
                    dilations=(1, 6, 12, 18) if d16_mg124 else (1, 12, 24, 36), dropout_ratio=0.1,
                    num_classes=num_classes)
        self.decode_head = (DepthwiseSeparableASPPHead(c1_in_channels=64 if small else 256,
                                                       c1_channels=12 if small else 48, **head) if plus
                            else ASPPHead(**head))
        self.auxiliary_head = (FCNHead(in_channels=256 if small else 1024, in_index=2, channels=64 if small else 256,
                                       num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=num_classes)
                               if aux else None)

    def forward(self, img):
        features = self.backbone(img)
        out = resize(self.decode_head(features), img.shape[2:])
        aux = resize(self.auxiliary_head(features), img.shape[2:]) if self.auxiliary_head is not None else None
        return out, aux


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BN statistics of a scale that keeps activations finite through 50 layers."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if tensor.dtype != torch.float32:
            continue
        if name.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        elif name.endswith("running_mean") or name.endswith("bias"):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
        elif tensor.dim() == 1:  # BN weight
            tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
        else:
            fan_in = tensor[0].numel()
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return model.eval()
