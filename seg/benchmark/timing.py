"""Timing, peak memory and the statistics over them.

After ``warmup`` calls, every one of ``steps`` calls is timed with CUDA events on a GPU (device time between the
call's first and last kernel, no host synchronisation inside the loop) or ``time.perf_counter`` on the CPU, and
the median is reported; "wall" throughputs divide the images by a synchronised wall clock around all timed steps.
Latency (batch 1) is a synchronised wall clock per call.
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    """Return the memory of dropped objects to the device, so the next peak-memory figure starts clean."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: ``torch.cuda.max_memory_allocated`` since the last reset. CPU: the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


def median_of(values: Sequence[float]) -> Optional[float]:
    return float(np.median(values)) if len(values) else None


def percentile_of(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if len(values) else None


def ratio(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    if ours is None or theirs is None or theirs == 0:
        return None
    return float(ours) / float(theirs)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> Tuple[List[float], float]:
    """Per-call times (ms) of ``steps`` calls after ``warmup`` calls, and the synchronised wall time (s) of all.

    CUDA: a pair of events around every call, read after one final synchronisation, so the host keeps queueing
    work as it would in training. CPU: ``time.perf_counter`` around every call.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        begin = time.perf_counter()
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        sync(device)
        wall = time.perf_counter() - begin
        return [start.elapsed_time(end) for start, end in zip(starts, ends)], wall
    times = []
    begin = time.perf_counter()
    for _ in range(steps):
        tick = time.perf_counter()
        fn()
        times.append((time.perf_counter() - tick) * 1e3)
    return times, time.perf_counter() - begin


def time_latency(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> List[float]:
    """Synchronised wall-clock time (ms) of each call: what one request waits for."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - tick) * 1e3)
    return times


def first_call_s(fn: Callable[[], Any], device: torch.device) -> float:
    """One call, synchronised: includes torch.compile, cuDNN autotuning and lazy initialisation."""
    sync(device)
    tick = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - tick
