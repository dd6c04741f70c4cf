"""torchvision's ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` state dicts (``torchvision.models.segmentation``).

torchvision builds its ResNet with ``replace_stride_with_dilation=[False, True, True]`` (output stride 8, the first
unit of a dilated stage at the previous rate, no multi-grid), an ASPP at rates 12, 24, 36 and an optional FCN
auxiliary head on ``layer3``. Its backbone keys are ours; the head's are renamed.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from seg.models.layouts.base import Foreign, rename, strip_prefix, tensors_only

PREFIXES = (
    ("classifier.0.", "aspp."),
    ("classifier.1.", "decoder.block.0."),
    ("classifier.2.", "decoder.block.1."),
    ("classifier.4.", "classifier."),
    ("aux_classifier.", "aux_head."),
)
DEPTHS = {6: "resnet50", 23: "resnet101"}  # blocks in layer3


def layer3_blocks(state: Mapping[str, torch.Tensor], prefix: str = "backbone.layer3.") -> int:
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


def convert(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision keys (``module.`` already stripped by ``recognise``) -> ours."""
    return rename(state, PREFIXES)


def recognise(obj: Any) -> Optional[Foreign]:
    if not tensors_only(obj):
        return None
    state = strip_prefix(obj, "module.")
    backbone = DEPTHS.get(layer3_blocks(state))
    if "classifier.0.convs.0.0.weight" not in state or "classifier.4.weight" not in state or backbone is None:
        return None
    aux = "aux_classifier.4.weight" in state
    arguments = dict(backbone=backbone, num_classes=state["classifier.4.weight"].shape[0], output_stride=8,
                     multi_grid=None, contract_dilation=True, aspp_rates=(12, 24, 36), head="deeplabv3",
                     aux_loss=aux)
    name = f"torchvision deeplabv3_{backbone}" + (" (with aux_classifier)" if aux else "")
    return Foreign(name, arguments, convert(state), stride_recorded=True,  # torchvision builds them at OS8 only
                   preset=f"torchvision_deeplabv3_{backbone}")
