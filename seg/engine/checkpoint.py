"""Checkpoints: saving, loading, resuming from, and rebuilding a trained model from one.

A checkpoint holds plain tensors and Python data only (``weights_only=True`` loads it) and is written atomically.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from seg.config import model_kwargs
from seg.data.voc import voc_palette
from seg.engine.device import unwrap, versions
from seg.errors import UserError
from seg.io import atomic_save, is_torchscript, safe_load
from seg.models import DeepLabV3, build_model

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "config", "class_names", "iteration")
# Config entries that change the model's parameters: resuming with another value cannot work.
SHAPE_KEYS = (("backbone", "name"), ("model", "head"), ("model", "aux_loss"), ("dataset", "num_classes"))


class CheckpointError(UserError, ValueError):
    pass


def capture_rng() -> Dict:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def save_checkpoint(path: Path, *, model: torch.nn.Module, config: Mapping, class_names: List[str],
                    palette: Optional[List[List[int]]], iteration: int, optimizer=None, scheduler=None,
                    scaler=None, sampler_position: Optional[Mapping] = None, best_miou: float = -1.0,
                    extra: Optional[Mapping] = None) -> None:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": int(iteration),
        "epoch": int(sampler_position["epoch"]) if sampler_position else 0,
        "sampler": dict(sampler_position or {}),
        "best_miou": float(best_miou),
        "rng": capture_rng(),
        "config": dict(config),
        "class_names": list(class_names),
        "palette": palette,
        "num_classes": len(class_names),
        "versions": versions(),
        **dict(extra or {}),
    }
    atomic_save(state, path)


def load_checkpoint(path) -> Dict:
    """Load and sanity-check one of our checkpoints (never executes code from the file)."""
    state = safe_load(path, what="checkpoint")
    if not isinstance(state, Mapping) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a checkpoint of this project (expected keys {list(REQUIRED_KEYS)}); "
                              "to start from plain weights use model.weights=PATH")
    return dict(state)


def load_trained(path: Union[str, Path]) -> Dict:
    """``load_checkpoint``, with a clear refusal of an exported TorchScript model (which is code, not weights)."""
    if is_torchscript(path):
        raise CheckpointError(f"{path} is an exported TorchScript model, not a training checkpoint: evaluate and "
                              "export need checkpoints/last.pt or best.pt of a training run")
    return load_checkpoint(path)


def num_classes_of(state: Mapping) -> int:
    return int(state.get("num_classes", len(state["class_names"])))


def palette_of(state: Mapping) -> np.ndarray:
    """The dataset palette (``[256, 3]`` uint8) a checkpoint or an export's metadata holds; VOC's if none."""
    palette = state.get("palette")
    return voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8).reshape(256, 3)


def model_from_checkpoint(state: Mapping, output_stride: Optional[int] = None,
                          path: Union[str, Path] = "checkpoint") -> DeepLabV3:
    """The model described by the checkpoint's config with its weights (all of them: a strict load), in eval mode.

    ``output_stride`` switches the trained model to another stride with the same weights (None: as trained).
    """
    model = build_model(**model_kwargs(state["config"], num_classes_of(state), pretrained="none"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {path} do not fit the model its config describes: "
                              f"{' '.join(str(error).split())[:300]}") from None
    if output_stride is not None:
        model.set_output_stride(output_stride)
    return model.eval()


def restore(path: Union[str, Path], output_stride: Optional[int] = None) -> Tuple[DeepLabV3, Dict]:
    """``(model, checkpoint state)`` from a checkpoint file, for evaluation, prediction and export."""
    state = load_trained(path)
    return model_from_checkpoint(state, output_stride, path), state


def check_resume_config(saved: Mapping, current: Mapping, path) -> None:
    """Refuse a resume whose config changes the model's shape; log every other change."""
    for section, key in SHAPE_KEYS:
        old, new = saved.get(section, {}).get(key), current.get(section, {}).get(key)
        if new is not None and old != new:
            raise CheckpointError(
                f"cannot resume {path}: {section}.{key} was {old!r} in that run and is {new!r} now; "
                f"resume with the original value, or start a new run with model.weights={path}")
    for change in _differences(saved, current):
        log.info("resume: config changed: %s", change)


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> List[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += _differences(a, b, name + ".")
        elif a != b and key != "resume":
            changes.append(f"{name}: {a!r} -> {b!r}")
    return changes
