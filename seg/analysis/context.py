"""Receptive field of Yu & Koltun's context module (``head=context``): the module alone, and the whole model.

The module alone is an explicit stack (its eight layers read from the built module) analysed like ``layers=...``:
Table 1's receptive field of 67x67 score-map pixels, its coverage and HDC check. The whole model is the encoder's
main path (``seg.analysis.model.main_path_layers``), the 1x1 classifier and the module, on the input image: the
module's 66 extra pixels count ``output_stride`` input pixels each.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from torch import nn

from seg.analysis.layers import Layer
from seg.analysis.model import layer_from_module, main_path_layers
from seg.analysis.report import _format_layers_report, analyse_layers, describe_stack


def module_layers(module: nn.Module) -> List[Layer]:
    """The module's convolutions in forward order, named by Table 1's layer numbers (layer1 ... layer8)."""
    convs = [child for child in module.children() if isinstance(child, nn.Conv2d)]
    return [layer_from_module(conv, f"layer{index}") for index, conv in enumerate(convs, start=1)]


def analyse_context_model(model: nn.Module, name: str = "model", input_size: int = 513) -> Dict:
    """The module alone on the score maps the encoder gives for ``input_size``, and the whole model's path."""
    backbone = main_path_layers(model)
    head = [layer_from_module(model.classifier, "classifier"), *module_layers(model.context)]
    whole = describe_stack([*backbone, *head], input_size)
    feature_size = whole["layers"][len(backbone) - 1]["output_size"]
    return {
        "mode": "context",
        "model": {"backbone": name, "context": model.context.context, "output_stride": model.output_stride,
                  "multi_grid": list(model.backbone.multi_grid)},
        "input_size": input_size,
        "feature_size": feature_size,
        "module": analyse_layers(module_layers(model.context), feature_size),
        "backbone_receptive_field": describe_stack(backbone)["receptive_field"],
        "receptive_field": whole["receptive_field"],
        "total_stride": whole["total_stride"],
        "coverage": whole["coverage"],
    }


def analyse_context_config(backbone: str, context: str = "basic", output_stride: int = 16,
                           multi_grid: Sequence[int] = (1, 2, 4), input_size: int = 513) -> Dict:
    """Build ``head=context`` on a built-in ResNet (random weights, two classes) and analyse it."""
    from seg.models import BACKBONES, build_model

    if backbone not in BACKBONES:
        raise ValueError(f"the receptive-field analysis covers only the built-in ResNets ({', '.join(BACKBONES)}), "
                         f"not {backbone!r} (MobileNetV3 and timm encoders included)")
    model = build_model(backbone, 2, output_stride=output_stride, multi_grid=multi_grid, head="context",
                        context=context)
    return analyse_context_model(model, backbone, input_size)


def format_context_report(report: Dict) -> List[str]:
    model, size, feature = report["model"], report["input_size"], report["feature_size"]
    module = report["module"]
    grid = ", ".join(str(g) for g in model["multi_grid"])
    return [f"{model['backbone']}, output stride {model['output_stride']}, multi-grid {grid}; context module "
            f"({model['context']}) on the class scores; input {size}x{size} -> score maps {feature}x{feature}",
            f"the context module alone (on the {feature}x{feature} score maps):",
            *[line.replace("input pixels (total stride 1)", "score-map pixels (Table 1's 67x67)")
              for line in _format_layers_report(module)],
            f"receptive field of the backbone output: {report['backbone_receptive_field']}x"
            f"{report['backbone_receptive_field']} input pixels",
            f"receptive field of the whole model (backbone, 1x1 classifier, context module): "
            f"{report['receptive_field']}x{report['receptive_field']} input pixels (total stride "
            f"{report['total_stride']}; the module's {module['receptive_field'] - 1} extra score-map pixels are "
            f"{report['total_stride']} input pixels each)"]
