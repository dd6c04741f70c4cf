"""What every segmentation model here returns: ``{"out": logits}``, plus ``"aux"`` (the auxiliary head's logits)
when it has one, both bilinearly resized to the input's height and width. A free function, so that TorchScript
compiles it inside each model's ``forward``."""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F


def at_input_size(size: List[int], logits: torch.Tensor, aux: Optional[torch.Tensor] = None,
                  align_corners: bool = False) -> Dict[str, torch.Tensor]:
    result = {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)}
    if aux is not None:
        result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=align_corners)
    return result
