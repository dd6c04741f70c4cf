"""Config keys of evaluate.py / predict.py / export.py, validated and turned into plain arguments.

This extends the ``seg.config`` boundary (same helpers, same ``ConfigError`` messages naming the key) for the
keys these scripts share: ``ckpt``, ``os``, ``device``, ``amp``, ``tta.*`` and ``inference.*``.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

from seg.config import AMP_MODES, DEVICES, ConfigError, choice, number
from seg.engine.inference import check_options, default_stride
from seg.models import OUTPUT_STRIDES


def require(cfg: Mapping, key: str, usage: str) -> None:
    if cfg.get(key) in (None, ""):
        raise ConfigError(f"{key} is required: {usage}")


def validate_inference(cfg: Mapping) -> None:
    """``os``, ``device``, ``amp``, ``tta`` and ``inference`` (a ``null`` os / amp means: as trained)."""
    if cfg["os"] is not None:
        choice(cfg["os"], "os", OUTPUT_STRIDES)
    choice(cfg["device"], "device", DEVICES)
    if cfg["amp"] is not None:
        choice(cfg["amp"], "amp", AMP_MODES)
    if not isinstance(cfg["tta"]["flip"], bool):
        raise ConfigError(f"tta.flip must be true or false, got {cfg['tta']['flip']!r}")
    inference = cfg["inference"]
    check_options(cfg["tta"]["scales"], inference["mode"], inference["window"], inference["stride"])


def validate_loader(cfg: Mapping) -> None:
    number(cfg["batch_size"], "batch_size", integer=True)
    number(cfg["num_workers"], "num_workers", strict=False, integer=True)


def inference_kwargs(cfg: Mapping, default_window: Optional[Sequence[int]]) -> Dict:
    """Keyword arguments of ``seg.engine.inference.segment``.

    For sliding windows the window defaults to ``default_window`` (the training crop size) and the stride to two
    thirds of the window; in whole-image mode both stay ``None``.
    """
    inference = cfg["inference"]
    window, stride = inference["window"], inference["stride"]
    if inference["mode"] == "slide":
        if window is None and default_window is None:
            raise ConfigError("inference.mode=slide needs inference.window=[height,width] here (the model does not "
                              "record its training crop size)")
        window = tuple(window if window is not None else default_window)
        stride = tuple(stride if stride is not None else default_stride(window))
    return dict(scales=tuple(float(s) for s in cfg["tta"]["scales"]), flip=cfg["tta"]["flip"],
                mode=inference["mode"], window=window, stride=stride)
