"""A trained model rebuilt from one of this project's checkpoints, for evaluation, prediction and export."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from seg.config import model_kwargs
from seg.data.voc import voc_palette
from seg.engine.checkpoint import CheckpointError, load_checkpoint
from seg.models import DeepLabV3, build_model


def is_torchscript(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/``), decided without loading it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


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
    """``(model, checkpoint state)`` from a checkpoint file."""
    state = load_trained(path)
    return model_from_checkpoint(state, output_stride, path), state
