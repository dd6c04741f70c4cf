"""The model a configuration describes: config keys <-> ``build_model`` keyword arguments, both ways.

A checkpoint of this project records its configuration; a file of another project records none, so the
architecture its layout needs (``seg.models.layouts``) is written as the same config keys. Both then build
through ``arguments_from_config``, and evaluate, predict and export treat them alike.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

# build_model argument -> (config section or None for top level, key, default for configs written before the key)
CONFIG_KEYS: Dict[str, tuple] = {
    "backbone": ("backbone", "name", None),
    "output_stride": (None, "os", None),
    "multi_grid": ("model", "multi_grid", (1, 2, 4)),
    "aspp_rates": ("model", "aspp_rates", None),
    "head": ("model", "head", "deeplabv3"),
    "aux_loss": ("model", "aux_loss", False),
    "dropout": ("model", "dropout", 0.1),
    "contract_dilation": ("model", "contract_dilation", False),
    "decoder_convs": ("model", "decoder_convs", None),
    "stem": ("backbone", "stem", "standard"),
    "aspp_channels": ("model", "aspp_channels", 256),
    "aspp_projection_kernel": ("model", "aspp_projection_kernel", 1),
    "separable_convs": ("model", "separable_convs", False),
    "classifier_dropout": ("model", "classifier_dropout", 0.0),
    "depthwise_bn_relu": ("model", "depthwise_bn_relu", True),
    "aspp_conv": ("model", "aspp_conv", False),
    "align_corners": ("model", "align_corners", False),
    "aspp_separable": ("model", "aspp_separable", None),
    "cascade_blocks": ("model", "cascade_blocks", 3),
    "low_level_reduced": ("model", "low_level_reduced", 48),
    "multi_grid_scaled": ("model", "multi_grid_scaled", True),
    "basic_conv2_dilated": ("model", "basic_conv2_dilated", True),
    "context": ("model", "context", None),
    "unet_widths": ("model", "unet_widths", None),
    "unet_dropout": ("model", "unet_dropout", 0.5),
}


TIMM_PREFIX = "timm:"  # build_model's name of a timm encoder: "timm:<timm model>" (seg.models.timm_backbone)


def encoder_name(backbone: Mapping) -> str:
    """``build_model``'s ``backbone`` from the ``backbone`` section: ``"resnet50"``, or ``"timm:<name>"`` with
    ``source: timm`` (configs written before ``backbone.source`` existed are torchvision's)."""
    source = backbone.get("source", "torchvision")
    return f"{TIMM_PREFIX}{backbone['name']}" if source == "timm" else backbone["name"]


def config_key(argument: str) -> str:
    section, key, _ = CONFIG_KEYS[argument]
    return f"{section}.{key}" if section else key


def arguments_from_config(config: Mapping, num_classes: int, pretrained: Optional[str] = None) -> Dict[str, Any]:
    """``build_model`` keyword arguments from a configuration (``pretrained``: None reads ``backbone.pretrained``)."""
    arguments: Dict[str, Any] = {"num_classes": num_classes}
    for argument, (section, key, default) in CONFIG_KEYS.items():
        value = (config.get(section, {}) if section else config).get(key, default)
        arguments[argument] = tuple(value) if isinstance(value, (list, tuple)) else value
    arguments["backbone"] = encoder_name(config["backbone"])
    arguments["aux_loss"] = bool(arguments["aux_loss"])
    arguments["pretrained"] = config["backbone"].get("pretrained", "none") if pretrained is None else pretrained
    channels = (config.get("dataset") or {}).get("channels")  # dataset.channels; before the key: RGB
    if channels not in (None, 3):
        arguments["in_channels"] = int(channels)
    return arguments


def config_from_arguments(arguments: Mapping[str, Any]) -> Dict[str, Any]:
    """The config sections (``backbone``, ``model``, ``os``) that build the model ``arguments`` describe."""
    config: Dict[str, Any] = {"backbone": {"pretrained": "none"}, "model": {}}
    for argument, (section, key, default) in CONFIG_KEYS.items():
        value = arguments.get(argument, default)
        value = list(value) if isinstance(value, tuple) else value
        (config.setdefault(section, {}) if section else config)[key] = value
    name = config["backbone"]["name"]
    if name.startswith(TIMM_PREFIX):
        config["backbone"].update(source="timm", name=name[len(TIMM_PREFIX):])
    return config
