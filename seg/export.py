"""Exporting a trained model for deployment: TorchScript (default), ONNX or a torch.export program.

Every format holds the same module, ``ExportedModel``: input float32 ``[N, channels, H, W]`` in [0, 1], RGB
when ``channels`` is 3 (``dataset.channels``; the normalisation, with the training's per-channel statistics, is
inside), output logits ``[N, C, H, W]`` at the input's size, for any N, H and W (ONNX and
torch.export: batch, height and width are dynamic dimensions). The class names, palette, input convention, model
settings and the project version travel with the file as ``metadata.json`` (TorchScript / torch.export extra
files, ONNX metadata properties).

The file is written under a temporary name, loaded back (ONNX: into onnxruntime) and compared with the eager model
on random inputs of several sizes; only a file that passes replaces ``path``. TorchScript and torch.export files
contain code: load only files you trust.
"""

from __future__ import annotations

import copy
import io
import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from seg import __version__
from seg.config import EXPORT_FORMATS, backbone_name, crop_hw, overwrite_flag, to_plain, validate_export
from seg.data.channels import InputStats, stats_from_state
from seg.engine.checkpoint import checkpoint_in, load_trained, model_from_checkpoint, num_classes_of, palette_of
from seg.errors import UserError
from seg.io import METADATA_FILE, load_torchscript, replacing, torchscript_is_the_contract
from seg.outputs import check_outputs

log = logging.getLogger("seg.export")

FORMATS = dict(zip(EXPORT_FORMATS, (".ts", ".onnx", ".pt2")))  # format -> the usual file extension
# format=export and format=onnx trace with torch.export, which keeps height and width free from torch 2.13 on;
# 2.4 to 2.12 (checked: 2.4.1, 2.6.0, 2.10.0, 2.11.0, 2.12.0) specialise them to the example's parity ("Constraints
# violated (height, width)") and so cannot honour "any H, W".
DYNAMIC_EXPORT_TORCH = "2.13"
INPUT = "float32 RGB [N, 3, H, W] in [0, 1]"  # the metadata's "input"; other channel counts: input_convention


def input_convention(channels: int) -> str:
    return INPUT if channels == 3 else f"float32 [N, {channels}, H, W] in [0, 1]"
# ONNX operator set: 18 is the one torch.onnx's exporter implements its operators in (other versions go through
# ONNX's version converter); onnxruntime >= 1.14 and TensorRT >= 9.2 run it. Why: docs/deployment.md.
ONNX_OPSET = 18
# square, non-square and odd sizes: where padding, pooling and resizing differ between implementations
CHECK_SIZES = ((128, 128), (160, 96), (97, 129))
OUTPUT = "logits [N, C, H, W] at the input size"


class ExportError(UserError, RuntimeError):
    """The exported file does not reproduce the model, or the format's packages are missing."""


class ExportedModel(nn.Module):
    """``forward(images)``: ``[N, channels, H, W]`` in [0, 1] (RGB for 3) -> logits at the input size
    (``model(x)["out"]``, no auxiliary head); ``stats``: the channels and normalisation (None: RGB, ImageNet's)."""

    def __init__(self, model: nn.Module, stats: Optional[InputStats] = None):
        super().__init__()
        model = copy.deepcopy(model).eval()
        if getattr(model, "aux_head", None) is not None:
            model.aux_head = None  # training-only output
        self.model = model
        stats = stats or InputStats()
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float32).view(1, -1, 1, 1))
        images = "RGB images [N, 3, H, W]" if stats.channels == 3 else f"images [N, {stats.channels}, H, W]"
        self.integer_error: str = (f"the exported model takes float {images} in [0, 1], got integer values (e.g. "
                                   "uint8 in [0, 255]): pass images.float() / 255")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # uint8 pixels in [0, 255] would run without an error and give wrong labels on most pixels.
        if not images.is_floating_point():
            raise ValueError(self.integer_error)
        return self.model((images - self.mean) / self.std)["out"]


def _example(size: Sequence[int], batch: int, channels: int = 3) -> torch.Tensor:
    return torch.rand(batch, channels, *size, generator=torch.Generator().manual_seed(0))


def _channels(module: nn.Module) -> int:
    """The input channels of an ``ExportedModel`` (3 for any other reference)."""
    mean = getattr(module, "mean", None)
    return int(mean.shape[1]) if isinstance(mean, torch.Tensor) and mean.dim() == 4 else 3


def _dynamic_shapes():
    """Batch, height and width are free (the example traced with has batch 2: a size of 1 would be fixed)."""
    dim = torch.export.Dim
    return {"images": {0: dim("batch", min=1, max=1024), 2: dim("height", min=33, max=8192),
                       3: dim("width", min=33, max=8192)}}


# -- writers: (module, path, metadata json) -> None ---------------------------------------------------------------

def _through_memory(save: Callable[[io.BytesIO], None], path: Path) -> None:
    """Run ``save`` into memory, then write the bytes to ``path``.

    torch's zip writer aborts the whole process (``terminate called after throwing an instance of 'c10::Error'``)
    when the disk fills while it writes to a file name; a write of bytes fails with an ``OSError`` instead.
    """
    buffer = io.BytesIO()
    save(buffer)
    path.write_bytes(buffer.getbuffer())


def _save_torchscript(module: ExportedModel, path: Path, metadata: str) -> None:
    with torchscript_is_the_contract():
        scripted = torch.jit.script(module)
        _through_memory(lambda f: torch.jit.save(scripted, f, _extra_files={METADATA_FILE: metadata}), path)


def _require_dynamic_export(format: str) -> None:
    if torch.__version__ < DYNAMIC_EXPORT_TORCH:
        raise ExportError(f"format={format} needs torch >= {DYNAMIC_EXPORT_TORCH} for inputs of any size (this is "
                          f"torch {torch.__version__}): use format=torchscript, or a newer torch")


def _save_program(module: ExportedModel, path: Path, metadata: str) -> None:
    _require_dynamic_export("export")
    program = torch.export.export(module, (_example((97, 129), 2, _channels(module)),),
                                  dynamic_shapes=_dynamic_shapes())
    _through_memory(lambda f: torch.export.save(program, f, extra_files={METADATA_FILE: metadata}), path)


def _save_onnx(module: ExportedModel, path: Path, metadata: str) -> None:
    _require_onnx()
    _require_dynamic_export("onnx")
    import onnx

    noisy = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]  # INFO lines for every rewrite pass
    levels = [logger.level for logger in noisy]
    try:
        for logger in noisy:
            logger.setLevel(logging.WARNING)
        torch.onnx.export(module, (_example((97, 129), 2, _channels(module)),), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_shapes=_dynamic_shapes(), dynamo=True,
                          opset_version=ONNX_OPSET, external_data=False, verbose=False)
    finally:
        for logger, level in zip(noisy, levels):
            logger.setLevel(level)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {METADATA_FILE: metadata})
    onnx.save(proto, str(path))


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise ExportError(f"format=onnx needs the onnx extra ({error.name} is not installed): "
                          'pip install -e ".[onnx]"') from None


# -- loaders: path -> (callable on a CPU tensor, metadata dict) ----------------------------------------------------

def _load_program(path: Path) -> Tuple[Callable, Dict]:
    extra = {METADATA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program.module(), json.loads(extra[METADATA_FILE] or "{}")


def _load_onnx(path: Path) -> Tuple[Callable, Dict]:
    _require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map.get(METADATA_FILE, "{}")

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])

    return run, json.loads(metadata)


WRITERS = {"torchscript": _save_torchscript, "onnx": _save_onnx, "export": _save_program}
LOADERS = {"torchscript": load_torchscript, "onnx": _load_onnx, "export": _load_program}


def check_parity(reference: nn.Module, exported: Callable, sizes: Sequence[Sequence[int]], rtol: float,
                 atol: float) -> List[Dict]:
    """Compare ``exported`` with ``reference`` on random inputs (batch 1, then 2) of each size.

    Every logit must satisfy ``|exported - reference| <= atol + rtol * |reference|``; otherwise ``ExportError``.
    Returns per input: its shape and the largest absolute difference.
    """
    results = []
    for index, size in enumerate(sizes):
        images = _example(size, 1 + index % 2, _channels(reference))
        with torch.inference_mode():
            expected = reference(images)
            actual = exported(images)
        if tuple(actual.shape) != tuple(expected.shape):
            raise ExportError(f"exported model gives shape {tuple(actual.shape)} for input {tuple(images.shape)}, "
                              f"the model {tuple(expected.shape)}")
        difference = (actual.float() - expected).abs()
        worst = float(difference.max())
        if not bool((difference <= atol + rtol * expected.abs()).all()):
            raise ExportError(f"exported model differs from the model on input {tuple(images.shape)}: largest "
                              f"absolute difference {worst:.3g} exceeds atol {atol:g} + rtol {rtol:g} x |logit|")
        results.append({"input": list(images.shape), "max_abs_diff": worst})
    return results


def _write(format: str, module: ExportedModel, path: Path, metadata: str) -> None:
    """``WRITERS[format]``; a model the format's compiler cannot take is one line naming the formats to try.

    E.g. TorchScript cannot compile a timm encoder whose feature extractor uses hooks, and torch.export cannot
    keep height and width free where a layer's output size needs a guard it cannot prove for every size
    (ceil-mode pooling, "same" padding: timm's ResNet-D and ConvNeXt).
    """
    try:
        WRITERS[format](module, path, metadata)
    except (UserError, OSError):
        raise
    except Exception as error:
        lines = str(error).strip().splitlines()
        others = " or ".join(f"format={f}" for f in EXPORT_FORMATS if f != format)
        raise ExportError(f"format={format} cannot export this model ({type(error).__name__}: "
                          f"{lines[0][:200] if lines else 'no message'}): try {others}") from None


def export_model(model: nn.Module, path: Union[str, Path], format: str = "torchscript",
                 metadata: Optional[Mapping] = None, check_sizes: Sequence[Sequence[int]] = CHECK_SIZES,
                 rtol: float = 1e-4, atol: float = 1e-4, stats: Optional[InputStats] = None) -> Dict:
    """Export ``model`` (returning ``{"out": logits}`` for normalised input) to ``path`` and verify the file.
    ``stats``: the input's channels and normalisation (None: RGB with ImageNet's statistics).

    Returns ``{"path", "format", "parity": check_parity's results}``. On a mismatch the file is not written.
    """
    path = Path(path)
    stats = stats or InputStats()
    module = ExportedModel(model, stats).cpu().eval()
    info = {"format": format, "input": input_convention(stats.channels), "output": OUTPUT, **stats.as_dict(),
            "seg_version": __version__, **dict(metadata or {})}
    if format == "onnx":
        info["onnx_opset"] = ONNX_OPSET
    with replacing(path, hint="free some space and export again") as temporary:  # only a checked file lands
        _write(format, module, temporary, json.dumps(info))
        exported, _ = LOADERS[format](temporary)
        parity = check_parity(module, exported, check_sizes, rtol, atol)
    return {"path": str(path), "format": format, "parity": parity}


def export_checkpoint(config: Mapping) -> Dict:
    """export.py: the checkpoint ``config["ckpt"]`` at output stride ``config["os"]`` to ``config["output"]``."""
    cfg = to_plain(config)
    validate_export(cfg)
    cfg["ckpt"] = str(checkpoint_in(cfg["ckpt"]))
    check_outputs([cfg["output"]], {"ckpt": cfg["ckpt"]}, "exported model", overwrite_flag(cfg))
    return export_checkpoint_state(load_trained(cfg["ckpt"], cfg.get("weights", "auto")), cfg["ckpt"], cfg["output"],
                                   cfg["format"], cfg["os"], cfg["check"]["sizes"], cfg["check"]["rtol"],
                                   cfg["check"]["atol"])


def export_checkpoint_state(state: Mapping, ckpt: Union[str, Path], output: Union[str, Path], format: str,
                            output_stride: Optional[int] = None, sizes: Sequence[Sequence[int]] = CHECK_SIZES,
                            rtol: float = 1e-4, atol: float = 1e-4, extra: Optional[Mapping] = None) -> Dict:
    """The loaded checkpoint ``state`` (read from ``ckpt``, its weights chosen: ``choose_weights``) exported to
    ``output``, with its class names, palette and settings as metadata (plus ``extra``)."""
    model = model_from_checkpoint(state, output_stride, ckpt)
    trained = state["config"]
    metadata = {
        "class_names": list(state["class_names"]), "num_classes": num_classes_of(state),
        "palette": palette_of(state).tolist(), "backbone": backbone_name(trained),
        "head": trained["model"]["head"], "output_stride": model.output_stride,
        "crop_size": list(crop_hw(trained["train"]["crop_size"])), "iteration": state["iteration"],
        "checkpoint": str(ckpt), "versions": state.get("versions"), "weights": state.get("weights", "raw"),
        **dict(extra or {}),
    }
    report = export_model(model, output, format, metadata, sizes, rtol, atol, stats_from_state(state))
    for result in report["parity"]:
        log.info("parity on input %s: max |difference| %.3g (rtol %g, atol %g)", result["input"],
                 result["max_abs_diff"], rtol, atol)
    log.info("exported %s (%s, output stride %d, %d classes) to %s", ckpt, format, model.output_stride,
             metadata["num_classes"], report["path"])
    return report
