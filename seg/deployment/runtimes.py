"""Deployment runtimes for exported ONNX files (and OpenVINO IRs converted from them): ONNX Runtime and OpenVINO, as
callables the engine runs like a model.

Every runtime takes what export.py's files take (float32 RGB ``[N, 3, H, W]`` in [0, 1], normalisation inside)
and returns logits ``[N, C, H, W]`` at the input size. ``RuntimeModel`` adapts one to the engine's interface
(normalised input -> ``{"out": logits}``), so evaluation, prediction, TTA and the sliding window run unchanged on
any backend. The runtimes are optional extras, imported only when chosen.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Dict, Mapping, Tuple

import numpy as np
import torch
from torch import nn

from seg.errors import MissingFileError, UserError
from seg.io import METADATA_FILE

log = logging.getLogger("seg.deployment")

EXTRAS = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}  # backend -> module, extra
# OpenVINO's CPU plugin runs in bf16 by default where the CPU has it (AVX-512 BF16, AMX): fp32 must be asked for.
# An int8 (QDQ) file runs its quantized layers in int8 whatever the hint; int8 keeps the others in f32.
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "fp16": "f16"}

Runtime = Callable[[np.ndarray], np.ndarray]  # [N, 3, H, W] float32 in [0, 1] -> logits


class BackendError(UserError, RuntimeError):
    pass


def _require_file(path: Path) -> None:
    if not Path(path).is_file():
        raise MissingFileError(f"model not found: {path}")


def _import(backend: str):
    module, extra = EXTRAS[backend]
    try:
        return __import__(module)
    except ImportError:
        raise BackendError(f"backend={backend} needs the {extra} extra ({module} is not installed): "
                           f'pip install -e ".[{extra}]"') from None


def onnx_metadata(path: Path) -> Dict:
    """export.py's metadata (class names, palette, input convention, output stride, ...) of an ONNX file; empty
    for an ONNX file export.py did not write."""
    import onnx
    from google.protobuf.message import DecodeError  # onnx's own dependency

    _require_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise UserError(f"{path} is not an ONNX file ({error}): give the .onnx file scripts/export.py "
                        "wrote with format=onnx") from None
    text = {prop.key: prop.value for prop in proto.metadata_props}.get(METADATA_FILE, "{}")
    return json.loads(text)


def openvino_metadata(path: Path) -> Dict:
    """export.py's metadata of an OpenVINO IR (``.xml``) converted from its ONNX file (``ovc model.onnx`` or
    ``openvino.convert_model``): OpenVINO's ONNX reader keeps the file's metadata properties in the model's runtime
    info, under ``framework``; empty for an IR made otherwise."""
    ov = _import("openvino")
    _require_file(path)
    try:
        model = ov.Core().read_model(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not an OpenVINO model OpenVINO can read ({reason}): give the .xml and .bin "
                        "that ovc wrote from export.py's ONNX file") from None
    key = ["framework", METADATA_FILE]
    return json.loads(model.get_rt_info(key).astype(str)) if model.has_rt_info(key) else {}


def open_onnxruntime(path: Path, device: torch.device, precision: str, threads: int) -> Runtime:
    ort = _import("onnxruntime")
    if path.suffix.lower() == ".xml":
        raise BackendError(f"{path} is an OpenVINO model, which onnxruntime cannot read: backend=openvino, or "
                           "ckpt= the ONNX file it was converted from")
    if precision == "bf16":
        raise BackendError("backend=onnxruntime has no bf16 on the CPU here: backend=openvino or backend=torch for "
                           "bf16, or precision=int8 with scripts/quantize.py's file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    if precision == "fp16":
        if "CUDAExecutionProvider" not in available:
            raise BackendError("precision=fp16 with backend=onnxruntime runs on its CUDA execution provider, which "
                               f"this onnxruntime lacks (it has {', '.join(available)}): pip install "
                               "onnxruntime-gpu and device=cuda, or precision=fp32 / int8 on the CPU")
        if device.type != "cuda":
            raise BackendError("precision=fp16 with backend=onnxruntime runs on the GPU: device=cuda")
        model = fp16_onnx(path)
    else:
        model = str(path)
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise BackendError("device=cuda with backend=onnxruntime needs onnxruntime-gpu (CUDAExecutionProvider); "
                               f"this onnxruntime has {', '.join(available)}: device=cpu, or pip install "
                               "onnxruntime-gpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(model, options, providers=providers)
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})[0]


def fp16_onnx(path: Path) -> bytes:
    """The ONNX file ``path`` with fp16 weights and computation (float32 input and output kept, so the engine feeds
    it as any other): onnxruntime's own converter, for its CUDA execution provider."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(str(path)), keep_io_types=True).SerializeToString()


def open_openvino(path: Path, device: torch.device, precision: str, threads: int) -> Runtime:
    ov = _import("openvino")
    if device.type != "cpu":
        raise BackendError("backend=openvino runs on the CPU here: device=cpu")
    core = ov.Core()
    target, config = "CPU", {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
                             "INFERENCE_NUM_THREADS": threads}
    if precision == "fp16":  # OpenVINO's CPU plugin has no fp16 here: its GPU plugin (an Intel GPU) does
        if not any(name.startswith("GPU") for name in core.available_devices):
            raise BackendError("precision=fp16 with backend=openvino runs on an OpenVINO GPU device (an Intel GPU "
                               f"and its driver), and this machine has {', '.join(core.available_devices)}: "
                               "precision=bf16 or fp32 on the CPU")
        target, config = "GPU", {"INFERENCE_PRECISION_HINT": "f16"}
    compiled = core.compile_model(core.read_model(str(path)), target, config)
    request = compiled.create_infer_request()
    return lambda images: request.infer({0: images})[compiled.output(0)].copy()


OPENERS = {"onnxruntime": open_onnxruntime, "openvino": open_openvino}


def open_runtime(path: Path, backend: str, device: torch.device, precision: str = "fp32",
                 threads: int = 0) -> Runtime:
    """The ``backend`` session of the ONNX file ``path`` (``threads`` 0: torch's intra-op thread count)."""
    return OPENERS[backend](Path(path), device, precision, threads or torch.get_num_threads())


class RuntimeModel(nn.Module):
    """A runtime as the engine's model: normalised images -> ``{"out": logits}`` (the runtime's file normalises
    itself, so the input is mapped back to [0, 1] first, with the file's own mean and std)."""

    def __init__(self, runtime: Runtime, metadata: Mapping):
        super().__init__()
        self.runtime = runtime
        self.output_stride = metadata.get("output_stride")
        mean, std = metadata["mean"], metadata["std"]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> Mapping[str, torch.Tensor]:
        unit = (images.float() * self.std + self.mean).clamp_(0, 1)
        logits = self.runtime(np.ascontiguousarray(unit.cpu().numpy()))
        return {"out": torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(images.device)}


def runtime_model(path: Path, backend: str, device: torch.device, precision: str,
                  metadata: Mapping) -> Tuple[RuntimeModel, str]:
    runtime = open_runtime(path, backend, device, precision)
    description = f"{backend} ({precision}) on {path}"
    return RuntimeModel(runtime, metadata).to(device), description
