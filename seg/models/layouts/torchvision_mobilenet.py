"""torchvision's ``deeplabv3_mobilenet_v3_large`` and ``lraspp_mobilenet_v3_large`` state dicts.

Both name the encoder ``backbone.0`` ... ``backbone.16`` (torchvision's ``IntermediateLayerGetter`` over
``mobilenet_v3_large(dilated=True).features``), which is this project's MobileNetV3 encoder key for key. LR-ASPP's
head keys are ours too; DeepLabV3's ``DeepLabHead`` / ``FCNHead`` keys are renamed as for torchvision's ResNet
models (``seg.models.layouts.torchvision.PREFIXES``). torchvision's ``DeepLabHead`` fixes the ASPP rates at 12, 24,
36 on this output-stride-16 encoder, so the architecture built for such a file uses them.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch import Tensor

from seg.models.layouts import torchvision
from seg.models.layouts.base import Foreign, rename, strip_prefix, tensors_only

BACKBONE = "mobilenet_v3_large"
ASPP_RATES = (12, 24, 36)  # torchvision's DeepLabHead default, at output stride 16 (dilated=True)
OUTPUT_STRIDE = 16
# (key, shape) pairs only mobilenet_v3_large's features give: the stem conv and the last 1x1 conv (C5, 960 ch)
ENCODER_SIGNATURE = (("backbone.0.0.weight", (16, 3, 3, 3)), ("backbone.16.0.weight", (960, 160, 1, 1)))


def _shape(state: Mapping[str, Tensor], key: str) -> Optional[tuple]:
    value = state.get(key)
    return tuple(value.shape) if isinstance(value, Tensor) else None


def arguments(state: Mapping[str, Tensor]) -> Optional[dict]:
    """``build_model`` keyword arguments for a torchvision MobileNetV3-Large DeepLabV3 / LR-ASPP state dict, else
    ``None``."""
    if any(_shape(state, key) != shape for key, shape in ENCODER_SIGNATURE):
        return None
    common = dict(backbone=BACKBONE, output_stride=OUTPUT_STRIDE, multi_grid=None)
    if _shape(state, "classifier.0.convs.0.0.weight") == (256, 960, 1, 1) and "classifier.4.weight" in state:
        return dict(common, head="deeplabv3", num_classes=_shape(state, "classifier.4.weight")[0],
                    aux_loss="aux_classifier.4.weight" in state, aspp_rates=ASPP_RATES)
    if _shape(state, "classifier.cbr.0.weight") == (128, 960, 1, 1) and "classifier.high_classifier.weight" in state:
        return dict(common, head="lraspp", num_classes=_shape(state, "classifier.high_classifier.weight")[0],
                    aux_loss=False, aspp_rates=None)
    return None


def convert(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Our keys for a state dict ``arguments`` accepts (LR-ASPP's are ours already)."""
    return dict(state) if "classifier.cbr.0.weight" in state else rename(state, torchvision.PREFIXES)


def recognise(obj: Any) -> Optional[Foreign]:
    if not tensors_only(obj):
        return None
    state = strip_prefix(obj, "module.")
    found = arguments(state)
    if found is None:
        return None
    name = f"torchvision {found['head']}_{BACKBONE}" + (" (with aux_classifier)" if found["aux_loss"] else "")
    return Foreign(name, found, convert(state), stride_recorded=True,  # torchvision builds them at OS16 only
                   preset=f"torchvision_{found['head']}_{BACKBONE}")
