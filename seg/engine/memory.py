"""Will a whole-image pass fit? The memory this process may still use, and what a forward of a given size needs.

A whole-image forward grows with the pixels: on a 20000x20000 image a ResNet needs tens of gigabytes and dies in
the allocator with a traceback, while the sliding window needs one full-size probability buffer plus one window's
activations. ``whole_image_bytes`` estimates the whole pass before it runs, from

* the model's peak bytes per input pixel, measured once per model by one forward of a ``PROBE_SIDE`` square
  image that counts the bytes of every tensor the forward creates while it is alive (``peak_forward_bytes``: a
  dispatch mode sees every operation, functional ones included, so nothing in the forward escapes the count; the
  constant part, the image-pooling branch, is counted as if it grew with the pixels, which errs on the safe side),
  times the pixels of the largest TTA scale;
* plus the full-size buffers ``segment`` keeps around a pass: the accumulator and up to three ``[N, C, H, W]``
  float32 tensors of logits and probabilities (upsampling, softmax, the mirrored copy).

``free_bytes`` is what this process may still allocate: on CUDA the driver's free memory plus the blocks torch's
caching allocator holds unused; on the CPU the least of ``/proc/meminfo``'s MemAvailable, the cgroup's limit less
its usage (v2 ``memory.max`` - ``memory.current``, v1 ``memory.limit_in_bytes`` - ``memory.usage_in_bytes``: what
containers and SLURM impose) and the address-space and data-segment limits (``RLIMIT_AS``, ``RLIMIT_DATA``) less
this process's ``VmSize`` and ``VmData``.
"""

from __future__ import annotations

import resource
import weakref
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PROBE_SIDE = 256          # pixels of the probe forward's square image: fast, and large against the output stride
FULL_SIZE_FLOAT_BUFFERS = 3  # logits upsampled, their softmax, a mirrored copy: [N, C, H, W] float32 each
CGROUP = Path("/sys/fs/cgroup")
_probed: "weakref.WeakKeyDictionary[torch.nn.Module, Tuple[float, int]]" = weakref.WeakKeyDictionary()


def free_bytes(device: torch.device) -> Optional[int]:
    """Bytes this process may still allocate on ``device``; None where nothing says (no limit is known)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    known = [value for value in (_mem_available(), _cgroup_room(), *_rlimit_room()) if value is not None]
    return min(known) if known else None


def _mem_available() -> Optional[int]:
    fields = _kib_fields(Path("/proc/meminfo"))
    return fields.get("MemAvailable")


def _kib_fields(path: Path) -> Dict[str, int]:
    """``Name: <n> kB`` lines (``/proc/meminfo``, ``/proc/self/status``) in bytes."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            fields[name] = int(parts[0]) * 1024
    return fields


def _cgroup_room(root: Path = CGROUP) -> Optional[int]:
    """The limit less the usage of this process's memory cgroup (v2, else v1); None without a limit."""
    rooms = []
    for limit_name, usage_name in (("memory.max", "memory.current"),
                                   ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        for folder in _cgroup_folders(root):
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            if limit is not None and usage is not None and limit < 1 << 60:  # v1 says "no limit" with ~2**63
                rooms.append(max(0, limit - usage))
    return min(rooms) if rooms else None


def _cgroup_folders(root: Path):
    """This process's cgroup folder and every folder above it (v2: the ``0::`` line; v1: the ``memory``
    controller's): a limit set on a parent (SLURM's job above its steps) binds the process too."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "" or "memory" in controllers.split(","):
            parts = Path(path.lstrip("/")).parts
            for base in (root, root / "memory"):
                for depth in range(len(parts), -1, -1):
                    folder = base.joinpath(*parts[:depth])
                    if folder.is_dir():
                        yield folder


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _rlimit_room():
    status = _kib_fields(Path("/proc/self/status"))
    for limit, used in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY and used in status:
            yield max(0, soft - status[used])


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensors that operations create while they are alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.storages: Dict[int, int] = {}  # data pointer -> tensors alive on it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in self.storages:
            self.storages[pointer] = 0
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.storages[pointer] += 1
        weakref.finalize(tensor, self._release, pointer, storage.nbytes())

    def _release(self, pointer: int, nbytes: int) -> None:
        self.storages[pointer] -= 1
        if not self.storages[pointer]:
            del self.storages[pointer]
            self.live -= nbytes


@torch.inference_mode()
def peak_forward_bytes(model: Callable, images: torch.Tensor) -> Tuple[int, int]:
    """``(the most bytes the tensors created by model(images) occupy at one time, the number of classes)``; the
    input is not counted."""
    counter = _LiveBytes()
    with counter:
        classes = model(images)["out"].shape[1]
    return counter.peak, classes


def probe(model: torch.nn.Module, channels: int, device: torch.device) -> Tuple[float, int]:
    """``(peak forward bytes per input pixel of one image, number of classes)``, measured once per model."""
    if model not in _probed:
        peak, classes = peak_forward_bytes(model, torch.zeros(1, channels, PROBE_SIDE, PROBE_SIDE, device=device))
        _probed[model] = (peak / PROBE_SIDE ** 2, classes)
    return _probed[model]


def whole_image_bytes(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float],
                      accumulate: torch.dtype) -> int:
    """Estimated peak bytes of ``segment(model, images, mode="whole", scales=scales)`` (see the module docstring)."""
    count, channels, height, width = images.shape
    per_pixel, classes = probe(model, channels, images.device)
    largest = max(max(scales), 1.0) ** 2 * height * width
    buffers = count * classes * height * width * (FULL_SIZE_FLOAT_BUFFERS * 4 + accumulate.itemsize)
    scaled_input = count * channels * largest * 4 if any(scale != 1 for scale in scales) else 0
    return int(per_pixel * count * largest + buffers + scaled_input)


def slide_bytes(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float], window: Sequence[int],
                accumulate: torch.dtype) -> int:
    """Estimated peak bytes of the sliding window: the full-size buffers (the accumulator, a scaled pass's own
    buffer and its resized copy, the scaled input) plus one window's forward."""
    count, channels, height, width = images.shape
    per_pixel, classes = probe(model, channels, images.device)
    largest = max(max(scales), 1.0) ** 2 * height * width
    buffers = count * classes * (height * width + (2 * largest if any(s != 1 for s in scales) else 0))
    scaled_input = count * channels * largest * 4 if any(scale != 1 for scale in scales) else 0
    return int(per_pixel * count * window[0] * window[1] + buffers * accumulate.itemsize + scaled_input)
