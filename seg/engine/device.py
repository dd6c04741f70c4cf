"""Which device and which autocast precision a job runs with."""

from __future__ import annotations

from typing import Optional

import torch

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


def place(model: torch.nn.Module, device: torch.device, channels_last: Optional[bool] = None) -> torch.nn.Module:
    """Move ``model`` to ``device`` and, on CUDA (or as ``channels_last`` says), to channels_last: the layout
    cuDNN convolutions run fastest in. Inputs need no conversion: a convolution with channels_last weights computes
    in channels_last.
    """
    model.to(device)
    if device.type == "cuda" if channels_last is None else channels_last:
        model.to(memory_format=torch.channels_last)
    return model
