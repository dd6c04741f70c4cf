"""VainF/DeepLabV3Plus-Pytorch's DeepLabV3 / V3+ on ResNet, re-written from its source for the layout tests.

VainF's code is not on PyPI. These modules copy ``network/_deeplab.py`` (``DeepLabHead``, ``DeepLabHeadV3Plus``,
``ASPP``, ``ASPPConv``, ``ASPPPooling``), ``network/utils.py`` (``_SimpleSegmentationModel``) and
``network/modeling.py`` (``_segm_resnet``) at commit 4e1087d (2022-10-11, its latest), with their module names, so that
``state_dict()`` has VainF's keys; its ResNet is torchvision's (``network/backbone/resnet.py`` is a copy).
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


def vainf_model(name: str, backbone_name: str, num_classes: int, output_stride: int) -> DeepLabV3:
    """``network.modeling.<name>_<backbone_name>(num_classes, output_stride)`` without pretrained weights."""
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
