"""VainF/DeepLabV3Plus-Pytorch's DeepLabV3 / V3+ on ResNet and MobileNetV2, re-written from its source for the
layout tests.

VainF's code is not on PyPI. These modules copy ``network/_deeplab.py`` (``DeepLabHead``, ``DeepLabHeadV3Plus``,
``ASPP``, ``ASPPConv``, ``ASPPPooling``, ``AtrousSeparableConvolution``, ``convert_to_separable_conv``),
``network/utils.py`` (``_SimpleSegmentationModel``), ``network/backbone/mobilenetv2.py`` (``MobileNetV2``,
``InvertedResidual``, ``ConvBNReLU``, ``fixed_padding``) and ``network/modeling.py`` (``_segm_resnet``,
``_segm_mobilenet``) at commit 4e1087d (2022-10-11, its latest), with their module names, so that ``state_dict()`` has
VainF's keys; its ResNet is torchvision's (``network/backbone/resnet.py`` is a copy). The MobileNetV2 is written
out, not taken from torchvision: its padding differs (see mobilenet_v2 below).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter


class ASPPConv(nn.Sequential):
    def __init__(self, in_channels, out_channels, dilation):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPPPooling(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x):
        size = x.shape[-2:]
        x = super().forward(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, in_channels, atrous_rates):
        super().__init__()
        out_channels = 256
        modules = [nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                 nn.ReLU(inplace=True))]
        modules += [ASPPConv(in_channels, out_channels, rate) for rate in atrous_rates]
        modules.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(nn.Conv2d(5 * out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.Dropout(0.1))

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHeadV3Plus(nn.Module):
    def __init__(self, in_channels, low_level_channels, num_classes, aspp_dilate):
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(low_level_channels, 48, 1, bias=False), nn.BatchNorm2d(48),
                                     nn.ReLU(inplace=True))
        self.aspp = ASPP(in_channels, aspp_dilate)
        self.classifier = nn.Sequential(nn.Conv2d(304, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256),
                                        nn.ReLU(inplace=True), nn.Conv2d(256, num_classes, 1))

    def forward(self, feature):
        low_level_feature = self.project(feature["low_level"])
        output_feature = self.aspp(feature["out"])
        output_feature = F.interpolate(output_feature, size=low_level_feature.shape[2:], mode="bilinear",
                                       align_corners=False)
        return self.classifier(torch.cat([low_level_feature, output_feature], dim=1))


class DeepLabHead(nn.Module):
    def __init__(self, in_channels, num_classes, aspp_dilate):
        super().__init__()
        self.classifier = nn.Sequential(ASPP(in_channels, aspp_dilate), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.Conv2d(256, num_classes, 1))

    def forward(self, feature):
        return self.classifier(feature["out"])


class DeepLabV3(nn.Module):  # _SimpleSegmentationModel
    def __init__(self, backbone, classifier):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x):
        input_shape = x.shape[-2:]
        x = self.classifier(self.backbone(x))
        return F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)


class AtrousSeparableConvolution(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=bias, groups=in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0, bias=bias))

    def forward(self, x):
        return self.body(x)


def convert_to_separable_conv(module):
    """``main.py --separable_conv`` applies it to ``model.classifier`` of the v3+ models (``module.bias`` is None
    for these bias-free convs: no bias)."""
    new_module = module
    if isinstance(module, nn.Conv2d) and module.kernel_size[0] > 1:
        new_module = AtrousSeparableConvolution(module.in_channels, module.out_channels, module.kernel_size,
                                                module.stride, module.padding, module.dilation, module.bias)
    for name, child in module.named_children():
        new_module.add_module(name, convert_to_separable_conv(child))
    return new_module


def _make_divisible(v, divisor, min_value=None):
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, dilation=1, groups=1):
        super().__init__(nn.Conv2d(in_planes, out_planes, kernel_size, stride, 0, dilation=dilation, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(out_planes), nn.ReLU6(inplace=True))


def fixed_padding(kernel_size, dilation):
    kernel_size_effective = kernel_size + (kernel_size - 1) * (dilation - 1)
    pad_total = kernel_size_effective - 1
    pad_beg = pad_total // 2
    pad_end = pad_total - pad_beg
    return (pad_beg, pad_end, pad_beg, pad_end)


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, dilation, expand_ratio):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
        layers.extend([ConvBNReLU(hidden_dim, hidden_dim, stride=stride, dilation=dilation, groups=hidden_dim),
                       nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)])
        self.conv = nn.Sequential(*layers)
        self.input_padding = fixed_padding(3, dilation)

    def forward(self, x):
        x_pad = F.pad(x, self.input_padding)
        if self.use_res_connect:
            return x + self.conv(x_pad)
        return self.conv(x_pad)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000, output_stride=8, width_mult=1.0, round_nearest=8):
        super().__init__()
        input_channel, last_channel = 32, 1280
        self.output_stride = output_stride
        current_stride = 1
        inverted_residual_setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                                     [6, 160, 3, 2], [6, 320, 1, 1]]
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features = [ConvBNReLU(3, input_channel, stride=2)]
        current_stride *= 2
        dilation = 1
        previous_dilation = 1
        for t, c, n, s in inverted_residual_setting:
            previous_dilation = dilation
            if current_stride == output_stride:
                stride = 1
                dilation *= s
            else:
                stride = s
                current_stride *= s
            output_channel = int(c * width_mult)
            for i in range(n):
                if i == 0:
                    features.append(InvertedResidual(input_channel, output_channel, stride, previous_dilation, t))
                else:
                    features.append(InvertedResidual(input_channel, output_channel, 1, dilation, t))
                input_channel = output_channel
        features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))


def _segm_mobilenet(name, num_classes, output_stride):
    aspp_dilate = [12, 24, 36] if output_stride == 8 else [6, 12, 18]
    backbone = MobileNetV2(output_stride=output_stride)
    backbone.low_level_features = backbone.features[0:4]
    backbone.high_level_features = backbone.features[4:-1]
    backbone.features = None
    backbone.classifier = None
    if name == "deeplabv3plus":
        return_layers = {"high_level_features": "out", "low_level_features": "low_level"}
        classifier = DeepLabHeadV3Plus(320, 24, num_classes, aspp_dilate)
    else:
        return_layers = {"high_level_features": "out"}
        classifier = DeepLabHead(320, num_classes, aspp_dilate)
    return DeepLabV3(IntermediateLayerGetter(backbone, return_layers=return_layers), classifier)


def vainf_model(name: str, backbone_name: str, num_classes: int, output_stride: int) -> DeepLabV3:
    """``network.modeling.<name>_<backbone_name>(num_classes, output_stride)`` without pretrained weights
    (``backbone_name``: resnet50, resnet101 or mobilenet)."""
    if backbone_name == "mobilenet":
        return _segm_mobilenet(name, num_classes, output_stride)
    if output_stride == 8:
        replace_stride_with_dilation, aspp_dilate = [False, True, True], [12, 24, 36]
    else:
        replace_stride_with_dilation, aspp_dilate = [False, False, True], [6, 12, 18]
    backbone = getattr(resnet, backbone_name)(weights=None, replace_stride_with_dilation=replace_stride_with_dilation)
    if name == "deeplabv3plus":
        return_layers = {"layer4": "out", "layer1": "low_level"}
        classifier = DeepLabHeadV3Plus(2048, 256, num_classes, aspp_dilate)
    else:
        return_layers = {"layer4": "out"}
        classifier = DeepLabHead(2048, num_classes, aspp_dilate)
    return DeepLabV3(IntermediateLayerGetter(backbone, return_layers=return_layers), classifier)
