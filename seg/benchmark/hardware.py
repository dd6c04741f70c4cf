"""What the benchmark ran on: the device, the library versions and the device's peak TFLOP/s."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

# Dense (no sparsity) tensor-core / FP32 peaks in TFLOP/s from NVIDIA's datasheets. Matched against
# torch.cuda.get_device_name() in order: the first entry whose every token is in the name wins.
PEAK_TFLOPS: List[Tuple[str, Tuple[str, ...], Dict[str, Optional[float]]]] = [
    ("H100 NVL", ("h100", "nvl"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", ("h100", "pcie"), {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 SXM", ("h100",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("H200 NVL", ("h200", "nvl"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200 SXM", ("h200",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("A100", ("a100",), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", ("l40s",), {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("V100", ("v100",), {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7}),
]
PEAK_SOURCE = "NVIDIA datasheet, dense (no sparsity)"


def device_info(device: torch.device) -> Dict:
    info = {"type": device.type, "name": None, "capability": None, "memory_gib": None,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    memory_gib=props.total_memory / 2 ** 30)
    else:
        info["name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def versions() -> Dict:
    import torchvision

    try:
        from importlib.metadata import version

        seg_version = version("seg")
    except Exception:  # noqa: BLE001 - not installed (PYTHONPATH checkout)
        seg_version = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "seg": seg_version}


def peak_tflops(device: torch.device, amp_dtype: Optional[torch.dtype], override: Optional[float] = None) -> Dict:
    """The device's peak for the precision the convolutions run in, or nulls (CPU, unknown GPU).

    Full precision on CUDA counts as TF32 when cuDNN may use it (``torch.backends.cudnn.allow_tf32``, PyTorch's
    default), FP32 otherwise.
    """
    if amp_dtype is torch.bfloat16:
        precision = "bf16"
    elif amp_dtype is torch.float16:
        precision = "fp16"
    elif device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        precision = "tf32"
    else:
        precision = "fp32"
    result = {"name": None, "precision": precision, "tflops": None, "source": None}
    if override is not None:
        return {**result, "name": "config", "tflops": float(override), "source": "config peak_tflops"}
    if device.type != "cuda":
        return result
    name = torch.cuda.get_device_name(device)
    entry = lookup_peak(name)
    if entry is not None:
        result.update(name=entry[0], tflops=entry[1].get(precision), source=PEAK_SOURCE)
    return result


def lookup_peak(device_name: str) -> Optional[Tuple[str, Dict[str, Optional[float]]]]:
    lowered = device_name.lower()
    for label, tokens, figures in PEAK_TFLOPS:
        if all(token in lowered for token in tokens):
            return label, figures
    return None
