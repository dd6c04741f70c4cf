"""torchrun / DDP helpers. One process without torchrun's variables is world size 1, rank 0; a task of a SLURM
``srun`` step of several tasks (Hydra's submitit launcher) takes torchrun's variables from SLURM's
(``seg.engine.slurm``)."""

from __future__ import annotations

import datetime
import logging
import os
from collections import deque
from typing import Deque, List

import torch
import torch.distributed as dist

from seg.engine import slurm


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_type: str, timeout_min: float = 10) -> None:
    """Start the process group from torchrun's environment, or SLURM's (NCCL on GPU, gloo on CPU).

    ``timeout_min``: how long a collective (all-reduce, barrier) waits for the other ranks before this rank fails
    with a timeout error, e.g. when one rank is stopped or hung; torchrun then stops the remaining ranks. Every
    rank-0-only step between two collectives (ImageNet weights download, dataset generation, a checkpoint
    save) must fit in it.
    """
    slurm.adopt_slurm_environment()
    if not launched_by_torchrun() or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    if dist.get_rank() != 0:  # one log: the other ranks report only warnings and errors
        logging.getLogger().setLevel(logging.WARNING)


def timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a collective that gave up waiting for the other ranks (gloo: "Timed out waiting ...").

    NCCL does not raise: its watchdog ends the process after the timeout.
    """
    return dist.is_initialized() and world_size() > 1 and "timed out" in str(error).lower()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device(device_type: str) -> torch.device:
    if device_type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# The last objects handed to collectives (tensors made in Python, work handles), kept past the process group's end.
# When ``wait()`` returns, a gloo worker thread may still hold the finished work; if it then dropped the last
# reference to a tensor made in Python it would need the GIL to free it, while holding the lock that the group's
# destructor takes with the GIL held when the run ends: a deadlock (torch 2.4 hung about 1 run in 10 on a loaded
# machine, after saving its checkpoints). With a reference here the worker never frees a Python object. Only the
# last few can still be in a worker's hands; older ones are released while the loop runs, when the GIL is free.
_in_flight: Deque[object] = deque(maxlen=16)


def keep(*objects: object) -> None:
    """Hold ``objects`` (a collective's tensors, its work handle) until later collectives replace them."""
    _in_flight.extend(objects)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        keep(tensor)
    return tensor


def shard(indices: List[int]) -> List[int]:
    """This rank's share of ``indices`` without padding, so evaluation never counts a sample twice."""
    return indices[rank()::world_size()]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), so all ranks evaluate the saved model."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
            keep(buffer)
