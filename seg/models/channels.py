"""The first convolution of an encoder for inputs with other than 3 channels (grayscale, RGB-D, multispectral).

The rule is timm's ``adapt_input_conv`` (timm/models/_manipulate.py), which timm applies when it loads pretrained
weights into a model built with ``in_chans``: for 1 channel the RGB filters are summed (a gray image through the
summed filter gives what the RGB filters gave on that image repeated in R, G and B); for more, the RGB filters
are repeated cyclically up to the channel count and scaled by ``3 / channels``, so that the layer's response to
an input whose channels are all alike keeps its size. timm is an optional extra here, so the rule is written once
below; tests/test_channels.py compares it with timm's function.

The built-in ResNets (standard and deep stem) and torchvision's MobileNetV3 are built and loaded with RGB
weights as before, then their first convolution is replaced by an adapted one (``adapt_first_conv``); a
checkpoint of a model trained on ``channels`` inputs then loads into it unchanged. timm encoders take timm's own
``in_chans``, which applies the same rule to its pretrained weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def adapt_input_conv(in_chans: int, conv_weight: torch.Tensor) -> torch.Tensor:
    """RGB filters ``[O, 3, kh, kw]`` -> ``[O, in_chans, kh, kw]`` by timm's rule (see the module docstring)."""
    if in_chans < 1:
        raise ValueError(f"in_chans must be positive, got {in_chans}")
    out_channels, rgb, kh, kw = conv_weight.shape
    if rgb != 3:
        raise ValueError(f"the first convolution takes {rgb} channels, not 3: its filters cannot be adapted")
    if in_chans == 3:
        return conv_weight
    dtype = conv_weight.dtype
    weight = conv_weight.float()
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)
    else:
        repeat = int(math.ceil(in_chans / 3))
        weight = weight.repeat(1, repeat, 1, 1)[:, :in_chans, :, :] * (3 / float(in_chans))
    return weight.to(dtype)


def adapted_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_chans`` channels, its weights adapted (``adapt_input_conv``)."""
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, conv.weight.detach()))
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach())
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def first_conv_path(module: nn.Module) -> str:
    """The name of the first ``nn.Conv2d`` that takes 3 channels (the order of ``named_modules``: registration)."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            if child.in_channels != 3:
                break
            return name
    raise ValueError(f"{type(module).__name__} has no convolution taking 3 channels first")


def adapt_first_conv(module: nn.Module, in_chans: int) -> nn.Module:
    """``module`` with its first (3-channel) convolution replaced by one for ``in_chans``; ``module`` itself is
    changed and returned. 3 changes nothing."""
    if in_chans == 3:
        return module
    path = first_conv_path(module)
    parent_path, _, name = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, name, adapted_conv(getattr(parent, name), in_chans))
    return module
