"""The context module of Yu & Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions" (ICLR 2016), on
one of this project's encoders (``build_model(head="context", context="basic" | "large")``).

The module takes C score maps (C = the number of classes) and returns C score maps, so it sits after a 1x1
classifier on the encoder's output, as the paper puts it after its front-end's final classifier. Its Table 1:
seven 3x3 convolutions at dilations 1, 1, 2, 4, 8, 16, 1, each truncated (ReLU), then a 1x1 convolution without
truncation; the receptive field grows 3, 5, 9, 17, 33, 65, 67, 67. The basic module keeps C channels throughout;
the large one widens them to 2C, 2C, 4C, 8C, 16C, 32C, 32C before the final 1x1 back to C.

Random initialisation did not train in the paper; it initialises the module to pass its input through. Basic:
``k^b(t, a) = 1[t=0] 1[a=b]`` (the centre tap of channel a to channel a). Large: between layers of c_i and c_i+1
channels (C divides both), ``k^b(t, a) = C / c_i+1`` where ``t = 0`` and ``floor(aC / c_i) = floor(bC / c_i+1)``,
else noise ``N(0, sigma^2)`` with ``sigma << C / c_i+1`` (it breaks the ties between the copies of a channel).
Each group of ``c / C`` channels then carries ``C / c`` times one input channel, and the final 1x1 sums a group back
to it. Biases are zero. With the truncations, the module computes ``max(x, 0)`` at initialisation: the identity on
non-negative scores, as the paper's own code (fyu/dilation's ``build_context``) gives its module the front-end's
scores the same way.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from seg.models.backbone import check_output_stride
from seg.models.outputs import at_input_size

CONTEXTS = ("basic", "large")
DILATIONS = (1, 1, 2, 4, 8, 16, 1)  # the seven 3x3 layers (Table 1); the eighth layer is a 1x1
# Output channels of the seven 3x3 layers as multiples of C (Table 1); the final 1x1 returns C.
WIDTHS = {"basic": (1, 1, 1, 1, 1, 1, 1), "large": (2, 2, 4, 8, 16, 32, 32)}
# sigma of the large module's noise as a fraction of C / c_i+1 (the paper says only sigma << C / c_i+1).
NOISE = 1e-3


def check_context(context: Optional[str], head: str, aspp_rates: Optional[Sequence[int]] = None) -> None:
    """``context`` names the module with head ``context`` (None: basic) and is None with any other head."""
    if head == "context":
        if aspp_rates is not None:
            raise ValueError(f"aspp_rates must be null with head context (the context module replaces the ASPP), "
                             f"got {list(aspp_rates)!r}")
        if context is not None and context not in CONTEXTS:
            raise ValueError(f"context must be one of {list(CONTEXTS)} (or null: basic) with head context, "
                             f"got {context!r}")
    elif context is not None:
        raise ValueError(f"context must be null with head {head} (it chooses the context module of head context), "
                         f"got {context!r}")


def identity_init_(conv: nn.Conv2d, num_classes: int, noise: float = NOISE,
                   generator: Optional[torch.Generator] = None) -> None:
    """The paper's identity initialisation of one layer (its generalised form where the widths differ, which is
    the plain identity where they are equal; ``noise`` = sigma / (C / c_out), 0 for none)."""
    c_in, c_out = conv.in_channels, conv.out_channels
    scale = num_classes / c_out
    with torch.no_grad():
        weight = torch.zeros_like(conv.weight)
        if noise:
            weight.normal_(0.0, noise * scale, generator=generator)
        out_group = torch.arange(c_out) * num_classes // c_out
        in_group = torch.arange(c_in) * num_classes // c_in
        centre = conv.kernel_size[0] // 2
        weight[:, :, centre, centre] = torch.where(out_group[:, None] == in_group[None, :], scale,
                                                   weight[:, :, centre, centre])
        conv.weight.copy_(weight)
        if conv.bias is not None:
            conv.bias.zero_()


class ContextModule(nn.Sequential):
    """Table 1's module on ``num_classes`` score maps: ``basic`` or ``large``, identity-initialised (``noise``:
    the large module's sigma / (C / c_i+1); the basic module's identity has none)."""

    def __init__(self, num_classes: int, context: str = "basic", noise: float = NOISE):
        widths = [num_classes * multiple for multiple in WIDTHS[context]]
        layers = []
        for c_in, c_out, dilation in zip([num_classes, *widths], widths, DILATIONS):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(widths[-1], num_classes, 1))
        super().__init__(*layers)
        self.context = context
        for conv in self.convs():
            identity_init_(conv, num_classes, noise if context == "large" else 0.0)

    def convs(self) -> Sequence[nn.Conv2d]:
        return [module for module in self if isinstance(module, nn.Conv2d)]


class ContextNet(nn.Module):
    """Encoder, 1x1 classifier to C score maps, the context module on them, logits upsampled to the input size.

    ``forward(x)`` returns ``{"out": logits}`` (plus ``"aux"``: an FCN head on stage 3) as DeepLabV3 does.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, context: str = "basic",
                 aux_head: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1)
        self.context = ContextModule(num_classes, context)
        self.aux_head = aux_head
        self.num_classes = num_classes

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def set_output_stride(self, output_stride: int) -> None:
        """Run the same weights at another output stride: only the encoder changes (the module's dilations are on
        the score maps' own grid, as in the paper)."""
        check_output_stride(output_stride)
        self.backbone.set_output_stride(output_stride)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        _, mid, high = self.backbone(x)
        logits = self.context(self.classifier(high))
        aux: Optional[torch.Tensor] = None
        if self.aux_head is not None:
            aux = self.aux_head(mid)
        return at_input_size(x.shape[-2:], logits, aux)
