"""What a model is, without timing it: 3x3 dilations, ASPP rates, parameter count and FLOPs (counted on the meta
device). Works on our models and on torchvision's DeepLabV3 alike."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn


def conv3x3_dilations(backbone: nn.Module) -> Dict[str, List[int]]:
    """Dilation of every 3x3 convolution of stages 2-4, in order (a BasicBlock unit has two)."""
    result = {}
    for stage in ("layer2", "layer3", "layer4"):
        result[stage] = [m.dilation[0] for m in getattr(backbone, stage).modules()
                         if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    return result


def _aspp_module(model: nn.Module) -> nn.Module:
    return model.aspp if hasattr(model, "aspp") else model.classifier[0]  # ours / torchvision's DeepLabHead


def aspp_rates(model: nn.Module) -> List[int]:
    aspp = _aspp_module(model)
    return [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)]


def count_flops(factory: Callable[[], nn.Module], input_hw: Tuple[int, int], backward: bool = False,
                output_stride: Optional[int] = None) -> Dict:
    """FLOPs of one image for the model ``factory()`` builds, counted on the meta device (no compute, no memory).

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of convolutions and matrix
    products; BatchNorm, activations, interpolation and the loss are not counted. Returns ``forward`` (eval
    mode, batch 1), ``forward_backward`` (train mode, per image of a batch of 2: torchvision's image pooling
    cannot train on one image; null unless ``backward``) and ``aspp_input`` (the ASPP input shape at batch 1).
    ``output_stride`` switches our model with ``set_output_stride`` first.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = factory()
    if output_stride is not None:
        meta.set_output_stride(output_stride)
    meta.eval()
    shapes: List[List[int]] = []
    hook = _aspp_module(meta).register_forward_pre_hook(lambda _m, args: shapes.append(list(args[0].shape)))
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(torch.zeros(1, 3, *input_hw, device="meta"))
        result = {"forward": int(counter.get_total_flops()), "forward_backward": None, "aspp_input": shapes[0]}
        if backward:
            meta.train()
            counter = FlopCounterMode(display=False)
            with counter:
                outputs = meta(torch.zeros(2, 3, *input_hw, device="meta"))
                sum(v.float().sum() for v in outputs.values()).backward()
            result["forward_backward"] = int(counter.get_total_flops()) // 2
    finally:
        hook.remove()
    return result


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
