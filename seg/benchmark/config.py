"""The benchmark's configuration: the argparse spelling of ``--compare`` and the check of every key before any
work starts."""

from __future__ import annotations

from typing import List, Mapping, Sequence

from seg.benchmark.torchvision_ref import TORCHVISION_BACKBONES
from seg.config import AMP_MODES, DEVICES, ConfigError, choice, crop_hw, number, validate_model
from seg.models import OUTPUT_STRIDES

COMPARE_MODES = ("torchvision",)


def rewrite_argv(argv: Sequence[str]) -> List[str]:
    """Accept ``--compare torchvision`` / ``--compare=torchvision`` (argparse style) as Hydra's ``compare=...``."""
    out, i = [argv[0]] if argv else [], 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--compare":
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]
            out.append(f"compare={argv[i + 1] if has_value else 'torchvision'}")
            i += 2 if has_value else 1
            continue
        if arg.startswith("--compare="):
            arg = "compare=" + arg.split("=", 1)[1]
        out.append(arg)
        i += 1
    return out


def _optional_count(value, key: str, minimum: int) -> None:
    if value is not None:
        number(value, key, minimum=minimum, strict=False, integer=True)


def validate_benchmark(cfg: Mapping) -> None:
    """Check every key before any work starts (naming the key and the allowed values)."""
    validate_model(cfg)
    choice(cfg["device"], "device", DEVICES)
    choice(cfg["amp"], "amp", AMP_MODES)
    choice(cfg["channels_last"], "channels_last", ("auto", True, False))
    choice(cfg["compile"], "compile", (True, False))
    choice(cfg.get("micro", True), "micro", (True, False))
    compare = cfg.get("compare")
    choice(compare, "compare", (None, *COMPARE_MODES))
    choice(cfg["eval_os"], "eval_os", OUTPUT_STRIDES)
    number(cfg["batch_size"], "batch_size", integer=True)
    _optional_count(cfg.get("eval_batch_size"), "eval_batch_size", 1)
    _optional_count(cfg.get("warmup"), "warmup", 0)
    _optional_count(cfg.get("steps"), "steps", 1)
    _optional_count(cfg.get("cpu_threads"), "cpu_threads", 1)
    number(cfg["num_workers"], "num_workers", strict=False, integer=True)
    number(cfg["data_steps"], "data_steps", strict=False, integer=True)
    if cfg.get("peak_tflops") is not None:
        number(cfg["peak_tflops"], "peak_tflops")
    crop_hw(cfg["crop_size"], "crop_size")
    crop_hw(cfg["eval_size"], "eval_size")
    if compare == "torchvision":
        if cfg["backbone"]["name"] not in TORCHVISION_BACKBONES:
            raise ConfigError(
                f"compare=torchvision supports backbone {list(TORCHVISION_BACKBONES)}, got "
                f"{cfg['backbone']['name']!r}: torchvision has no DeepLabV3 for resnet18/34, and its BasicBlock "
                "refuses dilation > 1, so no torchvision-built atrous resnet18/34 exists to compare with")
        if cfg["model"]["head"] != "deeplabv3":
            raise ConfigError(f"compare=torchvision needs model.head=deeplabv3 (torchvision has no DeepLabv3+), "
                              f"got {cfg['model']['head']!r}")
    if cfg["data_steps"] > 0 and cfg["dataset"].get("root") == "???":
        raise ConfigError("dataset.root is required for the data-loader figures: set dataset.root=... "
                          "(or data_steps=0 to skip them)")
