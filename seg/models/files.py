"""One entry for every weights file a user may hold: ``model_from_file(path) -> (model, report)``.

A checkpoint of this project builds the model its config describes; another project's file builds the
architecture its layout needs (``seg.models.layouts``). Either way every tensor of the model comes from the file
(a strict load), so the model returned never runs with randomly initialised layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple, Union

from torch import nn

from seg.io import describe
from seg.models.deeplab import build_model
from seg.models.layouts import Foreign, load_file, recognise
from seg.models.spec import arguments_from_config
from seg.models.weights import EXPECTED, LoadReport, WeightsError, is_own_checkpoint, load_exact


def read_model_file(obj: Any, source: Union[str, Path]) -> Foreign:
    """What a loaded weights file is, as a ``Foreign`` record (this project's checkpoints included)."""
    if is_own_checkpoint(obj):
        names = obj.get("class_names")
        num_classes = int(obj.get("num_classes", len(names or ())))
        arguments = arguments_from_config(obj["config"], num_classes, pretrained="none")
        return Foreign(f"seg checkpoint (iteration {obj.get('iteration', '?')})", arguments, dict(obj["model"]),
                       list(names) if names else None, stride_recorded=True)
    foreign = recognise(obj)
    if foreign is None:
        raise WeightsError(f"{source} is {describe(obj)}, not {EXPECTED}")
    return foreign


def build_from_file(record: Foreign, source: Union[str, Path], output_stride: Optional[int] = None) -> nn.Module:
    """The model ``record`` describes with all of its weights, in eval mode (``output_stride``: None keeps the
    stride the file was trained at, or the peer's default)."""
    arguments = {**record.arguments, "pretrained": "none"}
    model = build_model(**arguments)
    load_exact(model, record.state, f"{source} ({record.layout})", "the model it describes")
    if output_stride is not None:
        model.set_output_stride(output_stride)
    return model.eval()


def model_from_file(path: Union[str, Path], output_stride: Optional[int] = None) -> Tuple[nn.Module, LoadReport]:
    """``(model in eval mode, load report naming the layout)`` from any supported weights file."""
    record = read_model_file(load_file(path, what="model weights"), path)
    model = build_from_file(record, path, output_stride)
    report = LoadReport(loaded=list(record.state), layout=record.layout)
    return model, report

