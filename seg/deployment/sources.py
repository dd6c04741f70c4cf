"""What evaluate.py and predict.py run with ``backend=onnxruntime|openvino``: the ONNX file ``ckpt=`` names (or,
for openvino, the OpenVINO IR ``.xml`` converted from one), or a checkpoint exported to ONNX on the fly and cached
beside it.

A ``RuntimeSource`` is a ``seg.engine.checkpoint.ModelSource`` (``CheckpointSource`` is eager torch's):
``state(path)`` gives what the engine reads of a checkpoint (class names, palette, training crop, output stride;
the dataset only from a checkpoint), ``model(...)`` the runtime as a model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from seg.config import BACKBONE_SOURCES, overwrite_flag
from seg.deployment.runtimes import BackendError, onnx_metadata, openvino_metadata, runtime_model
from seg.engine.checkpoint import CheckpointSource, load_trained
from seg.errors import UserError
from seg.export import export_checkpoint_state
from seg.outputs import check_outputs

log = logging.getLogger("seg.deployment")

ONNX_SUFFIX = ".onnx"
OPENVINO_SUFFIX = ".xml"  # an OpenVINO IR: the graph, with its weights in the .bin of the same name


def is_onnx(path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def is_openvino(path) -> bool:
    return Path(path).suffix.lower() == OPENVINO_SUFFIX


def is_exported(path) -> bool:
    """An exported model a runtime reads as it is (no checkpoint to export)."""
    return is_onnx(path) or is_openvino(path)


def exported_metadata(path: Path, backend: str) -> Dict:
    """export.py's metadata of the exported file ``path``, which ``backend`` must be able to read."""
    if not is_openvino(path):
        return onnx_metadata(path)
    if backend != "openvino":
        raise BackendError(f"{path} is an OpenVINO model, which {backend} cannot read: backend=openvino, or ckpt= "
                           "the ONNX file it was converted from")
    weights = path.with_suffix(".bin")
    if path.is_file() and not weights.is_file():
        raise UserError(f"{path} is an OpenVINO model whose weights file {weights} is missing: keep the .bin that "
                        "ovc wrote beside the .xml")
    return openvino_metadata(path)


def cached_onnx(checkpoint: Path, output_stride: int) -> Path:
    """Where a checkpoint's on-the-fly export lives: beside it, named after it and the output stride."""
    return checkpoint.with_name(f"{checkpoint.stem}.os{output_stride}{ONNX_SUFFIX}")


def fingerprint(path: Path) -> Dict:
    """What tells that a cached export is of this very checkpoint file (a resumed run rewrites last.pt); the
    weights chosen in it (EMA or raw) are recorded beside."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def exported_state(path: Path, metadata: Mapping) -> Dict:
    """An export's metadata as the parts of a checkpoint the engine reads (no weights, no dataset: evaluate.py
    then needs ``dataset=``, as for another project's file)."""
    if "num_classes" not in metadata:
        kind = "an OpenVINO model not converted from an ONNX file of scripts/export.py" if is_openvino(path) else \
            "an ONNX file that scripts/export.py did not write"
        raise UserError(f"{path} is {kind} (no class names, palette or normalisation recorded): export the "
                        "checkpoint with format=onnx (then ovc model.onnx)")
    backbone = {"name": metadata.get("backbone", "?"), "source": BACKBONE_SOURCES[0]}
    config = {"os": metadata.get("output_stride"), "backbone": backbone, "model": {"head": metadata.get("head")},
              "dataset": {}, "train": {"crop_size": metadata.get("crop_size") or 513, "amp": "off"}}
    return {"model": {}, "config": config, "class_names": list(metadata["class_names"]),
            "num_classes": int(metadata["num_classes"]), "palette": metadata.get("palette"),
            "iteration": int(metadata.get("iteration") or 0), "layout": f"ONNX export {path.name}",
            "export_metadata": dict(metadata)}


class RuntimeSource:
    """Models for ``backend`` (onnxruntime | openvino) at ``precision``."""

    def __init__(self, backend: str, precision: str = "fp32", overwrite: bool = False, weights: str = "auto"):
        self.backend, self.precision, self.overwrite, self.weights = backend, precision, overwrite, weights

    def state(self, path) -> Dict:
        path = Path(path)
        if is_exported(path):
            if self.weights != "auto":
                raise UserError(f"weights={self.weights} cannot choose an exported model's weights ({path} holds "
                                "those it was exported with): give the checkpoint")
            return exported_state(path, exported_metadata(path, self.backend))
        return load_trained(path, self.weights)

    def model(self, state: Mapping, path, output_stride: Optional[int], device: torch.device) -> nn.Module:
        path = Path(path)
        if is_exported(path):
            if output_stride is not None and output_stride != state["config"]["os"]:
                raise UserError(f"os={output_stride} cannot change an exported model's output stride (it is "
                                f"{state['config']['os']}): give the checkpoint, which is exported at os= on the fly")
            onnx_file, metadata = path, state["export_metadata"]
        else:
            onnx_file, metadata = self.export(state, path, output_stride, self.overwrite)
        quantized = "quantization" in metadata
        if self.precision == "int8" and not quantized:
            raise UserError(f"precision=int8 runs an int8 model, and {onnx_file} is fp32: python scripts/quantize.py "
                            f"ckpt={path} output=model.int8.onnx, then ckpt=model.int8.onnx")
        if quantized and self.precision != "int8":
            log.info("%s is an int8 model: its quantized layers run in int8 (precision=%s sets the others)",
                     onnx_file, self.precision)
        model, description = runtime_model(onnx_file, self.backend, device, self.precision, metadata)
        log.info("running %s", description)
        return model

    @staticmethod
    def export(state: Mapping, checkpoint: Path, output_stride: Optional[int], overwrite: bool = False):
        """``(ONNX file, its metadata)`` of the checkpoint ``state`` read from ``checkpoint``: the cached export
        beside it when it is of this very file, else a new one (which replaces an earlier export only: a file of
        that name that export.py did not write needs ``overwrite``)."""
        stride = output_stride or state["config"]["os"]
        target = cached_onnx(checkpoint, stride)
        source = {**fingerprint(checkpoint), "weights": state.get("weights", "raw")}
        check_outputs([target], {"ckpt": checkpoint}, "exported model", overwrite, key="ckpt (its ONNX cache)")
        if target.is_file():
            metadata = onnx_metadata(target)
            if metadata.get("source") == source:
                log.info("using %s, the ONNX export of %s", target, checkpoint)
                return target, metadata
        log.info("exporting %s to %s (ONNX, output stride %d) for the runtime", checkpoint, target, stride)
        try:
            export_checkpoint_state(state, checkpoint, target, "onnx", output_stride, extra={"source": source})
        except PermissionError as error:
            raise UserError(f"cannot write the ONNX export {target} beside the checkpoint ({error.strerror}): "
                            "export it with scripts/export.py format=onnx output=<a writable path> and give that "
                            "file as ckpt=") from None
        return target, onnx_metadata(target)


def model_source(config: Mapping):
    """The engine's ``ModelSource`` for ``config["backend"]`` and ``config["precision"]`` (checked by
    ``seg.config.validate_inference``): eager torch's ``CheckpointSource`` for ``backend=torch``."""
    backend = config.get("backend", "torch")
    if backend == "torch":
        return CheckpointSource(config.get("weights", "auto"), config.get("channels_last", True))
    return RuntimeSource(backend, config.get("precision", "fp32"), overwrite_flag(config),
                         config.get("weights", "auto"))
