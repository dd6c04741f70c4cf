"""Where and how a job runs: the device, the autocast precision, the model's memory layout, library versions."""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager, Dict, Optional

import torch
import torchvision

import seg
from seg.errors import UserError


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    return device


def resolve_amp(amp: str, device_type: str, key: str = "train.amp") -> Optional[torch.dtype]:
    """autocast dtype, or None for full precision. ``auto``: bf16 on GPUs that have it, else fp16; off on CPU."""
    if amp == "auto":
        if device_type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device_type != "cuda":
        raise UserError(f"{key}=fp16 needs a CUDA device; use {key}=bf16 or {key}=off on the CPU")
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]


def openmp_threads_sleep() -> bool:
    """Whether torch's OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=passive``, which ``seg`` sets when
    it is imported before torch) rather than spin."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"


def size_cpu_threads(num_workers: int) -> int:
    """Give torch's intra-op threads the cores this process may use (``os.sched_getaffinity``; torch's own default
    counts the machine's cores, also in a container limited to fewer); returns the number of threads.
    ``OMP_NUM_THREADS``, when set (torchrun sets it to 1 for several processes per node), is left as it is.

    With OpenMP threads that spin while they wait (torch imported before ``seg`` without ``OMP_WAIT_POLICY``), a
    thread whose core a data-loader worker or another job takes burns the other cores at every barrier, so each
    worker takes one core off (at least 1 thread). Measured on 2 cores, ResNet-50 (docs/benchmarks.md): sleeping
    threads on both cores train at 10.7 images/s idle and 6.0 next to a busy process; spinning ones at 11.7 and
    3.7; one thread at 6.8 and 6.5. The workers run one torch thread and no OpenCV threads
    (``seg.data.worker_init_fn``).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = cores if openmp_threads_sleep() else max(1, cores - num_workers)
    torch.set_num_threads(threads)
    return threads


def autocast(device_type: str, dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` to ``dtype``, or no autocast at all when ``dtype`` is None (full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def place(model: torch.nn.Module, device: torch.device, channels_last: Optional[bool] = None) -> torch.nn.Module:
    """Move ``model`` to ``device`` and, on CUDA (or as ``channels_last`` says), to channels_last: the layout
    cuDNN convolutions run fastest in. Inputs need no conversion: a convolution with channels_last weights computes
    in channels_last.
    """
    model.to(device)
    if device.type == "cuda" if channels_last is None else channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def versions() -> Dict[str, Optional[str]]:
    """Library versions, recorded in checkpoints and benchmark results (CUDA / cuDNN: None without CUDA)."""
    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    return {"seg": str(seg.__version__), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "cuda": torch.version.cuda if cudnn else None,
            "cudnn": str(cudnn) if cudnn else None}
