"""Checkpoints: saving, loading, resuming from, and rebuilding a trained model from one.

A checkpoint holds plain tensors and Python data only (``weights_only=True`` loads it) and is written atomically.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Protocol, Tuple, Union

import numpy as np
import torch

from seg.data.cityscapes import CITYSCAPES_CLASSES
from seg.data.voc import VOC_CLASSES, voc_palette
from seg.engine.device import place, unwrap, versions
from seg.errors import UserError
from seg.io import atomic_save, describe, is_torchscript, safe_load
from seg.models import DeepLabV3
from seg.models.files import build_from_file, read_model_file
from seg.models.layouts import Foreign, load_file, recognise, smp
from seg.models.spec import CONFIG_KEYS, config_from_arguments

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("model", "config", "class_names", "iteration")
# Config entries that change the model's parameters: resuming with another value cannot work.
SHAPE_KEYS = (("backbone", "source"), ("backbone", "name"), ("model", "head"), ("model", "aux_loss"),
              ("dataset", "num_classes"), ("backbone", "stem"), ("model", "aspp_channels"),
              ("model", "aspp_projection_kernel"), ("model", "separable_convs"), ("model", "depthwise_bn_relu"),
              ("model", "aspp_conv"), ("model", "aspp_separable"), ("model", "low_level_reduced"),
              ("model", "cascade_blocks"), ("model", "context"), ("model", "unet_widths"))
# What a config written before a key existed meant by it (seg.models.spec), e.g. backbone.stem: standard.
SHAPE_DEFAULTS = {**{(section, key): default for section, key, default in CONFIG_KEYS.values()},
                  ("backbone", "source"): "torchvision"}
# Config entries that choose which parameters the optimizer holds: its saved state fits no other value.
TRAINED_PART_KEYS = (("train", "freeze_bn"), ("train", "freeze_backbone"))
# Config entries that only choose a new run's initial weights: a resume loads the checkpoint's instead.
INITIAL_WEIGHT_KEYS = ("backbone.pretrained", "model.weights")


# Tensor dtypes that every supported torch (pyproject.toml's range) saves and loads with ``weights_only=True``.
# torch 2.5 and older cannot pickle uint16/uint32/uint64, so a checkpoint holding one could not be resumed there.
PORTABLE_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                             torch.int16, torch.int8, torch.uint8, torch.bool})
PLAIN_TYPES = (type(None), bool, int, float, str)


class CheckpointError(UserError, ValueError):
    pass


def unportable(value, where: str = "checkpoint") -> List[str]:
    """Where ``value`` holds something outside ``PORTABLE_DTYPES`` tensors, plain Python values and containers."""
    if isinstance(value, torch.Tensor):
        return [] if value.dtype in PORTABLE_DTYPES else [f"{where}: {value.dtype}"]
    if isinstance(value, Mapping):
        return [problem for key, item in value.items() for problem in unportable(item, f"{where}[{key!r}]")]
    if isinstance(value, (list, tuple)):
        return [problem for i, item in enumerate(value) for problem in unportable(item, f"{where}[{i}]")]
    # exact types: a subclass (numpy's float64 is a float) pickles as its own class, which weights_only refuses
    return [] if type(value) in PLAIN_TYPES else [f"{where}: {type(value).__name__}"]


def capture_rng() -> Dict:
    """Every global RNG's state, in types that every supported torch pickles.

    numpy's MT19937 key is a uint32 array, and torch 2.5 cannot pickle a uint32 tensor (``torch.save`` raises
    ``KeyError: 'dtype torch.uint32 is not recognized'``): the key is stored as int64 (lossless) and cast back in
    ``restore_rng``. ``PORTABLE_DTYPES`` lists what a checkpoint may hold.
    """
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # int64; uint32 in older files
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def all_finite(model: torch.nn.Module) -> bool:
    return not nonfinite_tensors(model.state_dict())


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
    path = Path(path)
    problems = unportable(state)
    if problems:  # a bug, not a user mistake: fail before writing a file that an older torch could not resume
        raise TypeError(f"refusing to write {path}: {', '.join(problems[:3])} is not loadable by every supported "
                        f"torch (allowed: tensors of {sorted(str(d) for d in PORTABLE_DTYPES)} and plain Python)")
    atomic_save(state, path, hint=free_space_hint(path.parent))


def free_space_hint(checkpoints: Path) -> str:
    """What to do after a full disk: free space, then resume from ``last.pt`` where one was saved."""
    last = Path(checkpoints) / "last.pt"
    return f"free some space, then resume={last}" if last.exists() else "free some space"


def remove_partial_saves(folder: Path) -> None:
    """Delete the temporary files of checkpoint saves that were killed midway (``.last.tmp.pt``, named by
    ``seg.io.replacing``): never a complete checkpoint, up to a checkpoint's size each."""
    leftovers = sorted(Path(folder).glob(".*.tmp.pt"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    if leftovers:
        log.info("removed %d temporary files of interrupted checkpoint saves from %s: %s", len(leftovers), folder,
                 ", ".join(p.name for p in leftovers))


def load_checkpoint(path) -> Dict:
    """Load and sanity-check one of our checkpoints (never executes code from the file).

    Every command that starts from a checkpoint (resume, evaluate, predict, export) comes through here or through
    ``load_trained``, so a checkpoint whose weights hold NaN or infinity is refused once for all of them.
    """
    state = safe_load(path, what="checkpoint")
    if not is_checkpoint(state):
        raise CheckpointError(f"{path} is {describe(state)}, not a checkpoint of this project (a dict with "
                              f"{', '.join(REQUIRED_KEYS)}, as train.py writes); to start from plain weights use "
                              "model.weights=PATH")
    return _finite(dict(state), path)


def is_checkpoint(state) -> bool:
    return (isinstance(state, Mapping) and all(k in state for k in REQUIRED_KEYS)
            and isinstance(state["model"], Mapping))


def _finite(state: Dict, path) -> Dict:
    bad = nonfinite_tensors(state["model"]) + nonfinite_tensors(state.get("ema") or {})
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or infinity in {len(bad)} tensors, e.g. "
                              f"{bad[0]}): the model it saved had diverged; use an earlier checkpoint")
    return state


def checkpoint_in(path: Union[str, Path], resume: bool = False) -> Path:
    """The checkpoint file ``ckpt=`` / ``resume=`` means: ``path`` itself, or for a run folder (the folder a training
    wrote, or its ``checkpoints/``) its ``checkpoints/best.pt`` (``last.pt`` where there is no best) for evaluate,
    predict and export, and its ``checkpoints/last.pt`` for a resume. Says which; a folder that is no run folder
    (or has no such checkpoint yet) is a one-line error. Resolved before any loader sees the path."""
    path = Path(path)
    if not path.is_dir() or all((path / name).is_file() for name in (smp.CONFIG_FILE, smp.WEIGHTS_FILE)):
        return path  # a file, or the weights folder smp's save_pretrained writes
    checkpoints = path if path.name == "checkpoints" else path / "checkpoints"
    names = ("last.pt",) if resume else ("best.pt", "last.pt")
    for name in names:
        if (checkpoints / name).is_file():
            log.info("%s=%s is a run folder: using %s", "resume" if resume else "ckpt", path, checkpoints / name)
            return checkpoints / name
    wanted = " or ".join(f"checkpoints/{name}" for name in names)
    if checkpoints.is_dir() or (path / "train.log").is_file():
        raise CheckpointError(f"{path} is a run folder without {wanted} (the run stopped before its first "
                              "checkpoint): give a checkpoint file, or train.ckpt_every / train.ckpt_every_min "
                              "for earlier checkpoints")
    raise CheckpointError(f"{path} is a folder but not a run folder (no {wanted}) nor an smp save_pretrained folder "
                          f"(no {smp.CONFIG_FILE} and {smp.WEIGHTS_FILE}): give a checkpoint file or the folder a "
                          "training wrote into (its hydra.run.dir)")


def load_trained(path: Union[str, Path], weights: str = "auto") -> Dict:
    """A checkpoint of this project, or another project's weights file (``seg.models.layouts``) as one, for
    evaluate, predict and export; an exported TorchScript model (which is code, not weights) is refused.

    ``weights`` (``choose_weights``): ``auto`` puts the checkpoint's EMA of the weights in ``"model"`` where it
    has one, ``ema`` requires one, ``raw`` keeps the trained weights.
    """
    if is_torchscript(path):
        raise CheckpointError(f"{path} is an exported TorchScript model, not a training checkpoint: evaluate and "
                              "export need checkpoints/last.pt or best.pt of a training run")
    if Path(path).suffix.lower() == ".onnx":
        raise CheckpointError(f"{path} is an ONNX file: run it with backend=onnxruntime or backend=openvino "
                              "(evaluate.py and predict.py)")
    if Path(path).suffix.lower() == ".xml":
        raise CheckpointError(f"{path} is an OpenVINO model: run it with backend=openvino (evaluate.py and "
                              "predict.py)")
    state = load_file(path, what="checkpoint")
    if is_checkpoint(state):
        return _finite(choose_weights(dict(state), weights, path), path)
    record = recognise(state)
    if record is None:
        raise CheckpointError(f"{path} is {describe(state)}, not a checkpoint of this project (a dict with "
                              f"{', '.join(REQUIRED_KEYS)}, as train.py writes) nor a file of another project "
                              "this one reads (docs/peers.md); to start from plain weights use model.weights=PATH")
    stride = "" if record.stride_recorded else (
        f"; output stride {record.arguments['output_stride']} is its project's default, which the file does not "
        "record (os= if it was trained at another)")
    log.info("%s is a %s file%s", path, record.layout, stride)
    return _finite(choose_weights(foreign_checkpoint(record), weights, path), path)


def choose_weights(state: Dict, weights: str, path) -> Dict:
    """``state`` with the weights ``weights`` (the ``weights`` key of evaluate, predict and export) asks for in
    ``"model"`` and their name (``ema`` | ``raw``) in ``"weights"``; says which in one log line. The EMA
    (``train.ema_decay``) is the default where the file has one: best.pt was chosen by its mIoU."""
    ema = state.get("ema")
    if weights == "ema" and ema is None:
        raise CheckpointError(f"weights=ema: {path} holds no EMA of the weights (trained without train.ema_decay); "
                              "use weights=auto or weights=raw")
    if ema is not None and weights in ("auto", "ema"):
        log.info("weights: the EMA of the weights in %s (train.ema_decay=%s, %d updates); weights=raw for the "
                 "trained weights", path, state["config"]["train"].get("ema_decay"), state.get("ema_updates", 0))
        return {**state, "model": ema, "weights": "ema"}
    log.info("weights: the trained weights in %s%s", path,
             " (weights=raw; it also holds an EMA of the weights)" if ema is not None else "")
    return {**state, "weights": "raw"}


# The training crop a file of another project does not record: the papers' 513 (the sliding-window default and
# the export metadata's crop_size).
FOREIGN_CROP = 513


def foreign_checkpoint(record: Foreign) -> Dict:
    """Another project's file as a checkpoint of ours: its architecture as config keys, no training state.

    Without recorded class names, a class count that is Pascal VOC's or Cityscapes' takes their names (the
    datasets the peers publish weights for); ``class_names_recorded`` says which it was.
    """
    num_classes = int(record.arguments["num_classes"])
    names = record.class_names or list(
        {len(VOC_CLASSES): VOC_CLASSES, len(CITYSCAPES_CLASSES): CITYSCAPES_CLASSES}.get(num_classes)
        or [f"class_{i}" for i in range(num_classes)])
    config = {**config_from_arguments(record.arguments), "dataset": {},
              "train": {"crop_size": FOREIGN_CROP, "amp": "auto"}}
    return {"model": record.state, "config": config, "class_names": list(names), "num_classes": num_classes,
            "iteration": 0, "layout": record.layout, "class_names_recorded": bool(record.class_names)}


def num_classes_of(state: Mapping) -> int:
    return int(state.get("num_classes", len(state["class_names"])))


def palette_of(state: Mapping) -> np.ndarray:
    """The dataset palette (``[256, 3]`` uint8, a row per class beyond 256 classes) a checkpoint or an export's
    metadata holds; VOC's if none."""
    palette = state.get("palette")
    return voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def model_from_checkpoint(state: Mapping, output_stride: Optional[int] = None,
                          path: Union[str, Path] = "checkpoint") -> DeepLabV3:
    """The model described by the checkpoint's config with its weights (all of them: a strict load), in eval mode.

    ``output_stride`` switches the trained model to another stride with the same weights (None: as trained).
    """
    return build_from_file(read_model_file(state, path), path, output_stride)


class ModelSource(Protocol):
    """Where evaluate and predict get the checkpoint-shaped ``state`` of ``ckpt=`` and the model to run (normalised
    images -> ``{"out": logits}``; ``output_stride`` None: as trained)."""

    def state(self, path: Union[str, Path]) -> Dict: ...

    def model(self, state: Mapping, path: Union[str, Path], output_stride: Optional[int],
              device: torch.device) -> torch.nn.Module: ...


class CheckpointSource:
    """How evaluate and predict get a model in eager torch: the checkpoint (or another project's file) with the
    weights ``weights`` asks for (``choose_weights``) and the model its config builds. ``seg.deployment``'s runtime
    sources answer the same two calls for exported files.

    ``channels_last``: the model's weights in channels_last on every device, not only on CUDA (inference option
    ``channels_last``). oneDNN's CPU convolutions then run in NHWC, which docs/benchmarks.md measured faster for
    inference in fp32 and under bf16 autocast; a convolution with channels_last weights makes its output
    channels_last, so the input needs no conversion. False: torch's default contiguous (NCHW) layout everywhere.
    """

    def __init__(self, weights: str = "auto", channels_last: bool = True):
        self.weights, self.channels_last = weights, channels_last

    def state(self, path: Union[str, Path]) -> Dict:
        return load_trained(path, self.weights)

    def model(self, state: Mapping, path: Union[str, Path], output_stride: Optional[int],
              device: torch.device) -> torch.nn.Module:
        return place(model_from_checkpoint(state, output_stride, path), device, self.channels_last)


def restore(path: Union[str, Path], output_stride: Optional[int] = None,
            weights: str = "auto") -> Tuple[DeepLabV3, Dict]:
    """``(model, checkpoint state)`` from a checkpoint file, for evaluation, prediction and export; ``weights``:
    ``choose_weights``."""
    state = load_trained(path, weights)
    return model_from_checkpoint(state, output_stride, path), state


def check_resume_config(saved: Mapping, current: Mapping, path) -> None:
    """Refuse a resume whose config changes the model's shape."""
    for section, key in SHAPE_KEYS:
        default = SHAPE_DEFAULTS.get((section, key))
        old, new = saved.get(section, {}).get(key, default), current.get(section, {}).get(key, default)
        if new is not None and old != new:
            raise CheckpointError(
                f"cannot resume {path}: {section}.{key} was {old!r} in that run and is {new!r} now; "
                f"resume with the original value, or start a new run with model.weights={path}")
    for section, key in TRAINED_PART_KEYS:
        old, new = bool(saved.get(section, {}).get(key, False)), bool(current.get(section, {}).get(key, False))
        if old != new:
            raise CheckpointError(
                f"cannot resume {path}: {section}.{key} was {old} in that run and is {new} now (its optimizer state "
                f"holds the parameters trained then); resume with the original value, or start a new stage with "
                f"model.weights={path}")


def reuse_recorded(saved: Mapping, current: Dict) -> None:
    """Put into ``current`` what the resumed run worked out once and recorded in its config, so that the resume
    trains on the same thing: the split it derived (``dataset.splits``), the class list it found in the files
    (``dataset.class_names``) and the class weights a method name computed (``train.class_weights``, stored as the
    list). Values given explicitly now are kept."""
    splits = saved.get("dataset", {}).get("splits")
    if splits and "splits" in current["dataset"] and not current["dataset"]["splits"]:
        current["dataset"]["splits"] = splits
    names = saved.get("dataset", {}).get("class_names")  # a class list found in the files (LabelMe labels)
    if names and current["dataset"].get("class_names") is None and current["dataset"].get("name") == \
            saved.get("dataset", {}).get("name"):
        current["dataset"]["class_names"] = list(names)
    weights = saved.get("train", {}).get("class_weights")
    spec = current["train"].get("class_weights")
    if isinstance(weights, list) and isinstance(spec, str) and spec != "none":
        log.info("resume: train.class_weights=%s reuses the run's weights %s", spec, weights)
        current["train"]["class_weights"] = weights


def resume_changes(saved: Mapping, current: Mapping, iteration: int) -> List[str]:
    """Every config change of a resume at ``iteration`` and when it applies, one line each.

    The trainer builds everything but the weights from the current config, so a change applies from the first
    iteration after the checkpoint's (the optimizer's lr, momentum and weight decay and the LR schedule
    included: ``seg.engine.optim.resume_optimizer``); only the keys that choose initial weights are moot.
    """
    lines = []
    for name, change in _differences(saved, current):
        effect = ("ignored: the weights come from the checkpoint" if name in INITIAL_WEIGHT_KEYS
                  else f"applies from iteration {iteration + 1} on")
        lines.append(f"resume: config changed: {change} ({effect})")
    return lines


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> List[Tuple[str, str]]:
    """``(key, "key: old -> new")`` for every value that differs (``resume`` and ``overwrite`` aside: they are about
    this command, not the run)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += _differences(a, b, name + ".")
        elif a != b and key != "resume" and name != "overwrite":
            changes.append((name, f"{name}: {a!r} -> {b!r}"))
    return changes
