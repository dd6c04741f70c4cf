"""DeepLabv3 and DeepLabv3+ segmentation models, and ``build_model`` for every head (LR-ASPP: seg/models/lraspp.py)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from seg.models import mobilenet_v2, timm_backbone, unet
from seg.models.aspp import (
    ASPP,
    check_aspp_rates,
    check_projection_kernel,
    conv3x3_bn_relu,
    conv_bn_relu,
    default_aspp_rates,
)
from seg.models.backbone import (
    BACKBONES,
    build_backbone,
    check_multi_grid,
    check_output_stride,
    check_stem,
    fetch_imagenet_weights,
)
from seg.models.cascade import CascadeDeepLab, check_cascade_backbone, check_cascade_blocks
from seg.models.channels import adapt_first_conv
from seg.models.context import ContextNet, check_context
from seg.models.deeplabv2 import DeepLabV2, check_rates
from seg.models.lraspp import LRASPP
from seg.models.mobilenet import MOBILENETS, build_mobilenet
from seg.models.outputs import at_input_size

HEADS = ("deeplabv3", "deeplabv3plus", "lraspp", "cascade", "deeplabv2", "context", "unet_dilated")
# VainF/DeepLabV3Plus-Pytorch's MobileNetV2 (its padding, torchvision's tensors): name -> builder
PEER_ENCODERS = {mobilenet_v2.NAME: mobilenet_v2.build_vainf_mobilenetv2}
ENCODERS = (*BACKBONES, *MOBILENETS, *PEER_ENCODERS)  # backbone names: the atrous ResNets, torchvision's
# MobileNetV3, VainF's MobileNetV2
# LR-ASPP reads the encoder's stride-8 map: MobileNetV3's ``mid`` (C2). A ResNet's ``mid`` is stage 3 (stride 16 at
# OS16), so the head is offered where torchvision offers it only.
LRASPP_BACKBONES = tuple(MOBILENETS)
# 3x3 conv/BN/ReLU layers between the ASPP (v3) or the concatenation (v3+) and the classifier: allowed, default.
DECODER_CONVS = {"deeplabv3": ((0, 1), 1), "deeplabv3plus": ((1, 2), 2)}


class DeepLabV3Decoder(nn.Module):
    """DeepLabv3: one 3x3 conv/BN/ReLU on the ASPP output (torchvision's ``classifier.1-3``), or none
    (``convs=0``: mmsegmentation's ASPPHead goes from its ASPP straight to the classifier)."""

    def __init__(self, channels: int = 256, convs: int = 1, separable: bool = False, depthwise_bn_relu: bool = True):
        super().__init__()
        self.block = (conv3x3_bn_relu(channels, channels, separable=separable, depthwise_bn_relu=depthwise_bn_relu)
                      if convs else nn.Identity())

    def forward(self, features: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        return self.block(features)


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabv3+: stage-1 features reduced to 48 channels, joined with the upsampled ASPP output, two 3x3 convs
    (the paper's; ``convs=1``: VainF's DeepLabV3Plus-Pytorch), depthwise-separable with ``separable`` (the paper's,
    mmsegmentation's ``sep_bottleneck``).

    smp's DeepLabV3Plus adds a 3x3 conv/BN/ReLU on the ASPP output before upsampling it (``aspp_conv``: its
    ``decoder.aspp.1-3``), has one fuse conv, and upsamples with ``align_corners=True``.
    """

    def __init__(self, low_level_channels: int, channels: int = 256, low_level_reduced: int = 48, convs: int = 2,
                 separable: bool = False, depthwise_bn_relu: bool = True, aspp_conv: bool = False,
                 align_corners: bool = False):
        super().__init__()
        self.aspp_conv = (conv3x3_bn_relu(channels, channels, separable=separable, depthwise_bn_relu=depthwise_bn_relu)
                          if aspp_conv else nn.Identity())
        self.reduce = conv_bn_relu(low_level_channels, low_level_reduced)
        self.fuse = nn.Sequential(*[conv3x3_bn_relu(channels + low_level_reduced if i == 0 else channels, channels,
                                                    separable=separable, depthwise_bn_relu=depthwise_bn_relu)
                                    for i in range(convs)])
        self.align_corners = align_corners

    def forward(self, features: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        features = F.interpolate(self.aspp_conv(features), size=low_level.shape[-2:], mode="bilinear",
                                 align_corners=self.align_corners)
        return self.fuse(torch.cat([features, self.reduce(low_level)], dim=1))


class FCNHead(nn.Sequential):
    """Auxiliary head on stage 3 (torchvision's ``FCNHead`` layout; mmsegmentation's ``FCNHead(num_convs=1,
    concat_input=False)`` with ``channels = in_channels // 4`` computes the same, with ``Dropout2d``)."""

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
                 aux_head: Optional[nn.Module] = None, channels: int = 256, classifier_dropout: float = 0.0,
                 align_corners: bool = False):
        super().__init__()
        # Bilinear upsampling of the logits to the input size with corner pixels aligned (smp's) or not (the rest).
        self.align_corners = align_corners
        self.backbone = backbone
        self.aspp = aspp
        self.decoder = decoder
        # Channel dropout right before the classifier (mmsegmentation's ``dropout_ratio`` before ``conv_seg``).
        self.classifier_dropout = nn.Dropout2d(classifier_dropout) if classifier_dropout else nn.Identity()
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
        low, mid, high = self.backbone(x)
        logits = self.classifier(self.classifier_dropout(self.decoder(self.aspp(high), low)))
        aux: Optional[torch.Tensor] = None
        if self.aux_head is not None:
            aux = self.aux_head(mid)
        return at_input_size(x.shape[-2:], logits, aux, self.align_corners)


def check_arguments(backbone: str, num_classes: Optional[int] = None, output_stride: int = 16,
                    multi_grid: Optional[Sequence[int]] = (1, 2, 4), aspp_rates: Optional[Sequence[int]] = None,
                    head: str = "deeplabv3", aux_loss: bool = False, decoder_convs: Optional[int] = None,
                    stem: str = "standard", pretrained: str = "none", aspp_channels: int = 256,
                    aspp_projection_kernel: int = 1, classifier_dropout: float = 0.0, aspp_conv: bool = False,
                    low_level_reduced: int = 48, multi_grid_scaled: bool = True, cascade_blocks: int = 3,
                    context: Optional[str] = None, unet_widths: Optional[Sequence[int]] = None,
                    unet_dropout: float = unet.DROPOUT) -> None:
    """Raise a ``ValueError`` that starts with the name of the first bad argument of ``build_model``.

    ``build_model`` calls this first; ``seg.config`` calls it on a configuration before any work and words the
    error in config keys, so each rule is written once. ``num_classes=None`` skips that check. A timm encoder
    (``"timm:<name>"``) is checked against timm's model list, and built on the meta device to check that it has
    feature maps at ``output_stride`` and, for a multi-grid, ResNet stages.
    """
    # the dilated U-Net (seg/models/unet.py) has its own encoder and rules: checked first, so its errors name them
    unet.check_unet(backbone, head, output_stride, multi_grid, aspp_rates, aux_loss, pretrained, unet_widths,
                    unet_dropout)
    timm = timm_backbone.is_timm(backbone)
    if timm:
        timm_backbone.check_timm_name(backbone[len(timm_backbone.PREFIX):])
    elif backbone not in (*ENCODERS, unet.ENCODER):
        raise ValueError(f"backbone must be one of {list(ENCODERS)} or timm:<timm model>, got {backbone!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_output_stride(output_stride)
    if (backbone in MOBILENETS or backbone in PEER_ENCODERS) and multi_grid is not None:
        raise ValueError(f"multi_grid must be null for backbone {backbone} (it has no ResNet-like last stage to "
                         f"apply a grid to), got {list(multi_grid)!r}")
    if multi_grid is not None:
        check_multi_grid(multi_grid)
    if timm:
        timm_backbone.check_timm_arguments(backbone[len(timm_backbone.PREFIX):], output_stride, multi_grid)
    if head not in HEADS:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
    if aspp_rates is not None:
        (check_rates if head == "deeplabv2" else check_aspp_rates)(aspp_rates)
    if head in ("cascade", "deeplabv2"):  # seg/models/cascade.py, seg/models/deeplabv2.py
        _check_classic_head(backbone, head, aspp_rates, cascade_blocks, aspp_channels, aspp_projection_kernel)
    check_context(context, head, aspp_rates)
    allowed, _ = DECODER_CONVS.get(head, ((), None))
    if decoder_convs is not None and (isinstance(decoder_convs, bool) or decoder_convs not in allowed):
        raise ValueError(f"decoder_convs must be {f'one of {list(allowed)} or ' if allowed else ''}null with head "
                         f"{head}, got {decoder_convs!r}")
    if head == "lraspp":
        if backbone not in LRASPP_BACKBONES:
            raise ValueError(f"head lraspp (torchvision's LR-ASPP) needs backbone {' or '.join(LRASPP_BACKBONES)}; "
                             f"for backbone {backbone} use one of {[h for h in HEADS if h != 'lraspp']}")
        if aspp_rates is not None:
            raise ValueError(f"aspp_rates must be null with head lraspp (LR-ASPP has no ASPP), got {aspp_rates!r}")
        if aux_loss:
            raise ValueError("aux_loss must be false with head lraspp (LR-ASPP has no auxiliary head, as in "
                             "torchvision)")
    check_stem(stem, pretrained)
    if stem != "standard" and backbone not in BACKBONES:
        raise ValueError(f"stem {stem} is for the ResNets {list(BACKBONES)}, not backbone {backbone}")
    if isinstance(aspp_channels, bool) or not isinstance(aspp_channels, int) or aspp_channels < 1:
        raise ValueError(f"aspp_channels must be a positive integer, got {aspp_channels!r}")
    check_projection_kernel(aspp_projection_kernel)
    if aspp_conv and head != "deeplabv3plus":
        raise ValueError(f"aspp_conv must be false with head {head} (it is the DeepLabv3+ decoder's 3x3 conv on the "
                         "ASPP output; DeepLabv3's is decoder_convs)")
    if (isinstance(classifier_dropout, bool) or not isinstance(classifier_dropout, (int, float))
            or not 0 <= classifier_dropout < 1):
        raise ValueError(f"classifier_dropout must be a number in [0, 1), got {classifier_dropout!r}")
    if isinstance(low_level_reduced, bool) or not isinstance(low_level_reduced, int) or low_level_reduced < 1:
        raise ValueError(f"low_level_reduced must be a positive integer, got {low_level_reduced!r}")
    if not multi_grid_scaled and backbone not in BACKBONES:
        raise ValueError(f"multi_grid_scaled must be true for backbone {backbone} (false is mmsegmentation's "
                         f"multi-grid of the ResNets {list(BACKBONES)})")


def _check_classic_head(backbone: str, head: str, aspp_rates, cascade_blocks: int, aspp_channels: int,
                        aspp_projection_kernel: int) -> None:
    """The cascaded model and DeepLab v2's ASPP: no DeepLabv3 ASPP to size; the cascade on the built-in ResNets."""
    if head == "cascade":
        check_cascade_backbone(backbone)
        check_cascade_blocks(cascade_blocks)
        if aspp_rates is not None:
            raise ValueError(f"aspp_rates must be null with head cascade (it has no ASPP), got {aspp_rates!r}")
    for argument, value, default in (("aspp_channels", aspp_channels, 256),
                                     ("aspp_projection_kernel", aspp_projection_kernel, 1)):
        if value != default:
            raise ValueError(f"{argument} must be {default} with head {head} (DeepLabv3's ASPP only), got {value!r}")


def build_encoder(backbone: str, output_stride: int = 16, multi_grid: Optional[Sequence[int]] = (1, 2, 4),
                  pretrained: str = "none", contract_dilation: bool = False, stem: str = "standard",
                  multi_grid_scaled: bool = True, basic_conv2_dilated: bool = True, in_channels: int = 3) -> nn.Module:
    """The encoder ``backbone`` names: a built-in ResNet (``"resnet50"``), torchvision's MobileNetV3
    (``"mobilenet_v3_large"``) or a timm model (``"timm:<name>"``).

    ``multi_grid=None``: no multi-grid (a built-in ResNet then uses the stage rate in every unit).
    ``in_channels`` other than 3: the first convolution adapted from the RGB one (``seg.models.channels``).
    """
    if timm_backbone.is_timm(backbone):
        return timm_backbone.TimmBackbone(backbone[len(timm_backbone.PREFIX):], output_stride, multi_grid,
                                          pretrained, in_channels)
    if backbone in MOBILENETS:
        return adapt_first_conv(build_mobilenet(backbone, output_stride, pretrained), in_channels)
    if backbone in PEER_ENCODERS:
        return adapt_first_conv(PEER_ENCODERS[backbone](output_stride, pretrained), in_channels)
    return adapt_first_conv(build_backbone(backbone, output_stride, multi_grid, pretrained, contract_dilation, stem,
                                           multi_grid_scaled, basic_conv2_dilated), in_channels)


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
                head: str = "deeplabv3", aux_loss: bool = False, pretrained: str = "none", dropout: float = 0.1,
                contract_dilation: bool = False, decoder_convs: Optional[int] = None, stem: str = "standard",
                aspp_channels: int = 256, aspp_projection_kernel: int = 1, separable_convs: bool = False,
                classifier_dropout: float = 0.0, depthwise_bn_relu: bool = True, aspp_conv: bool = False,
                align_corners: bool = False, aspp_separable: Optional[bool] = None, low_level_reduced: int = 48,
                multi_grid_scaled: bool = True, basic_conv2_dilated: bool = True, cascade_blocks: int = 3,
                context: Optional[str] = None, unet_widths: Optional[Sequence[int]] = None,
                unet_dropout: float = unet.DROPOUT, in_channels: int = 3,
                ) -> Union[DeepLabV3, LRASPP, CascadeDeepLab, DeepLabV2, ContextNet, unet.DilatedUNet]:
    """Build DeepLabv3 / v3+ on an atrous ResNet, torchvision's MobileNetV3 or a timm encoder
    (``backbone="timm:<timm model name>"``), or LR-ASPP on MobileNetV3.

    ``pretrained`` applies to the backbone: ``"imagenet"`` (torchvision's weights and cache; timm's for a timm
    encoder), ``"none"``, or a path to a local state dict of the classification network. ``multi_grid=None``: no
    multi-grid (unit rates on a ResNet; the only value for MobileNetV3). Whole-model weights are loaded afterwards
    with ``load_weights``. ``contract_dilation`` and ``decoder_convs`` (None: the head's default) describe other
    projects' variants of the architecture (``seg.models.layouts``): the first unit of a dilated stage at half the
    rate, and the number of 3x3 convolutions before the classifier. mmsegmentation's D8 models need the rest:
    ``stem="deep"`` (``ResNetV1c``), ``aspp_channels=512`` (its heads' ``channels``, the width of the ASPP branches
    and of the decoder), ``aspp_projection_kernel=3`` (its ``bottleneck``), ``separable_convs`` (depthwise-separable
    3x3 convolutions in the ASPP and the decoder: its ``DepthwiseSeparableASPPHead``) and ``classifier_dropout``
    (``Dropout2d`` before the classifier, its ``dropout_ratio``; ``dropout`` is the one after the ASPP projection).
    segmentation_models_pytorch's models need four more: ``depthwise_bn_relu=False`` (its ``SeparableConv2d`` has
    no BN and ReLU between the depthwise and the pointwise conv), ``aspp_conv`` (its DeepLabV3Plus's 3x3 conv on
    the ASPP output), ``align_corners`` (its bilinear upsampling, of the logits and in the v3+ decoder) and
    ``aspp_separable`` (separable ASPP convs whatever the decoder's, its ``decoder_aspp_separable``; None: as
    ``separable_convs``). mmsegmentation's R18 and D16-MG124 models need three more: ``low_level_reduced`` (the
    channels the v3+ decoder reduces the stride-4 features to: 48, its R18's ``c1_channels`` 12),
    ``multi_grid_scaled=False`` (the grid's values are the last stage's rates: ``stage_plan``) and
    ``basic_conv2_dilated=False`` (its ``BasicBlock`` dilates the first 3x3 conv of a unit only).
    ``in_channels`` (``dataset.channels``): the input's channels; other than 3, the encoder's first convolution is
    adapted from the RGB one as timm does (``seg.models.channels``).

    The dilated family (docs/dilated.md): ``head="cascade"``: DeepLabv3's cascaded model, ``cascade_blocks`` copies
    of the last ResNet stage after it (seg/models/cascade.py); ``head="deeplabv2"``: DeepLab v2's ASPP-L,
    ``aspp_rates`` four (or any number of) summed atrous classifiers (seg/models/deeplabv2.py); both take
    ``aux_loss`` and ``classifier_dropout``. ``head="context"`` puts Yu & Koltun's context module (``context``:
    ``"basic"``, the default, or ``"large"``) on a 1x1 classifier of the encoder's output (seg/models/context.py);
    ``head="unet_dilated"`` with ``backbone="unet"`` is the dilated U-Net (``unet_widths``: its five encoder widths,
    None for 64..1024; ``unet_dropout``: after its two dilated stages), at output stride 16 (seg/models/unet.py).
    """
    check_arguments(backbone, num_classes, output_stride, multi_grid, aspp_rates, head, aux_loss, decoder_convs,
                    stem, pretrained, aspp_channels, aspp_projection_kernel, classifier_dropout, aspp_conv,
                    low_level_reduced, multi_grid_scaled, cascade_blocks, context, unet_widths, unet_dropout)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if head == "unet_dilated":
        return unet.DilatedUNet(num_classes, unet_widths or unet.WIDTHS, unet_dropout, in_channels)
    trunk = build_encoder(backbone, output_stride, multi_grid, pretrained, contract_dilation, stem, multi_grid_scaled,
                          basic_conv2_dilated, in_channels)
    if head == "lraspp":
        return LRASPP(trunk, num_classes)
    if head in ("cascade", "deeplabv2"):
        aux = FCNHead(trunk.aux_channels, num_classes) if aux_loss else None
        return (CascadeDeepLab(trunk, num_classes, cascade_blocks, aux, classifier_dropout) if head == "cascade"
                else DeepLabV2(trunk, num_classes, aspp_rates, aux, classifier_dropout))
    if head == "context":
        return ContextNet(trunk, num_classes, context or "basic",
                          FCNHead(trunk.aux_channels, num_classes) if aux_loss else None)
    rates = list(aspp_rates) if aspp_rates else default_aspp_rates(output_stride)
    aspp = ASPP(trunk.out_channels, rates, aspp_channels, dropout, aspp_projection_kernel,
                separable_convs if aspp_separable is None else aspp_separable, depthwise_bn_relu)
    convs = DECODER_CONVS[head][1] if decoder_convs is None else decoder_convs
    if head == "deeplabv3plus":
        decoder: nn.Module = DeepLabV3PlusDecoder(trunk.low_level_channels, aspp_channels, low_level_reduced, convs,
                                                  separable=separable_convs, depthwise_bn_relu=depthwise_bn_relu,
                                                  aspp_conv=aspp_conv, align_corners=align_corners)
    else:
        decoder = DeepLabV3Decoder(aspp_channels, convs, separable_convs, depthwise_bn_relu)
    aux_head = FCNHead(trunk.aux_channels, num_classes) if aux_loss else None
    return DeepLabV3(trunk, aspp, decoder, num_classes, aux_head, aspp_channels, classifier_dropout, align_corners)
