"""The one boundary between configuration (Hydra / OmegaConf or a plain dict) and the library.

Everything below ``seg`` takes plain arguments; this module validates a configuration, naming the key and the
allowed values on error, and turns it into keyword arguments for ``build_model`` and ``build_dataset``.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from seg.errors import UserError
from seg.models import BACKBONES, HEADS, OUTPUT_STRIDES

AMP_MODES = ("auto", "fp16", "bf16", "off")
DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("ce", "bootstrap")
# dataset keys that describe the run rather than how to read the files
DATASET_RUN_KEYS = ("val_split", "ignore_index")


class ConfigError(UserError, ValueError):
    pass


def to_plain(cfg: Any, throw_on_missing: bool = True) -> Dict:
    """A resolved plain ``dict`` from an OmegaConf config or a mapping (what checkpoints store).

    With ``throw_on_missing=False`` mandatory values left unset (``???``) stay as the string ``"???"``.
    """
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=throw_on_missing)
        except MissingMandatoryValue as error:
            hint = " (the folder that holds the dataset, see docs/datasets.md)" if error.full_key == "dataset.root" else ""
            raise ConfigError(f"{error.full_key} must be set on the command line{hint}, "
                              f"e.g. {error.full_key}=...") from None
    return {k: to_plain(v, throw_on_missing) if isinstance(v, Mapping) else copy.deepcopy(v) for k, v in cfg.items()}


def choice(value, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def number(value, key: str, minimum: float = 0.0, strict: bool = True, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    bad_type = not isinstance(value, kind) or isinstance(value, bool)
    if bad_type or (value <= minimum if strict else value < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{key} must be {'an integer' if integer else 'a number'} {bound}, got {value!r}")


def validate_model(cfg: Mapping) -> None:
    choice(cfg["backbone"]["name"], "backbone.name", sorted(BACKBONES))
    choice(cfg["os"], "os", OUTPUT_STRIDES)
    model = cfg["model"]
    choice(model["head"], "model.head", HEADS)
    grid = model["multi_grid"]
    if not grid or not all(isinstance(g, int) and g >= 1 for g in grid):
        raise ConfigError(f"model.multi_grid must be a non-empty list of positive integers, got {grid!r}")
    rates = model.get("aspp_rates")
    if rates is not None and (len(rates) != 3 or not all(isinstance(r, int) and r >= 1 for r in rates)):
        raise ConfigError(f"model.aspp_rates must be null or three positive integers, got {rates!r}")


def validate_train(cfg: Mapping) -> None:
    """Check every training key before any work starts."""
    validate_model(cfg)
    choice(cfg["device"], "device", DEVICES)
    train = cfg["train"]
    choice(train["amp"], "train.amp", AMP_MODES)
    choice(train["loss"], "train.loss", LOSSES)
    number(train["lr"], "train.lr")
    for key in ("iters", "batch_size"):
        number(train[key], f"train.{key}", integer=True)
    for key in ("eval_every", "ckpt_every", "num_workers", "warmup_iters"):
        number(train[key], f"train.{key}", strict=False, integer=True)
    number(train["log_every"], "train.log_every", integer=True)
    number(train["weight_decay"], "train.weight_decay", strict=False)
    number(train["aux_weight"], "train.aux_weight", strict=False)
    number(train["max_nonfinite"], "train.max_nonfinite", integer=True)
    crop_hw(train["crop_size"])
    if not 0 < train["bootstrap_fraction"] <= 1:
        raise ConfigError(f"train.bootstrap_fraction must be in (0, 1], got {train['bootstrap_fraction']!r}")


def crop_hw(value, key: str = "train.crop_size") -> Tuple[int, int]:
    """``(height, width)`` from a positive int (a square) or a ``[height, width]`` pair; else a ``ConfigError``."""
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        raise ConfigError(f"{key} must be a positive integer or [height, width], got {value!r}")
    return sides[0], sides[-1]


def model_kwargs(cfg: Mapping, num_classes: int, pretrained: Optional[str] = None) -> Dict:
    """Arguments of ``seg.models.build_model`` from a configuration."""
    model = cfg["model"]
    return dict(
        backbone=cfg["backbone"]["name"],
        num_classes=num_classes,
        output_stride=cfg["os"],
        multi_grid=tuple(model["multi_grid"]),
        aspp_rates=tuple(model["aspp_rates"]) if model.get("aspp_rates") else None,
        head=model["head"],
        aux_loss=bool(model["aux_loss"]),
        pretrained=cfg["backbone"]["pretrained"] if pretrained is None else pretrained,
        dropout=model.get("dropout", 0.1),
    )


def dataset_kwargs(dataset_cfg: Mapping, split: Optional[str] = None) -> Dict:
    """Arguments of ``seg.data.build_dataset`` from the ``dataset`` group (optionally another split)."""
    kwargs = {k: v for k, v in dataset_cfg.items() if k not in DATASET_RUN_KEYS}
    if split is not None:
        kwargs["split"] = split
    return kwargs
