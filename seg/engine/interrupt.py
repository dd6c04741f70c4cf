"""Stopping a training run at a step boundary: SIGINT, SIGTERM and SIGUSR1 end it with a checkpoint, and every DDP
rank agrees on when (a stop, and the time-based checkpoint of ``train.ckpt_every_min``).

A signal handler only records the request; the training loop asks ``Coordinator.after_step`` after each
optimisation step, saves ``last.pt`` at that iteration and raises ``Interrupted``, whose exit code is the shell's
128 + signal number: 130 (SIGINT, Ctrl-C), 143 (SIGTERM: SLURM's cancel, Kubernetes, ``docker stop``) and 138
(SIGUSR1, SLURM's ``--signal=USR1@90`` warning before the time limit: a job script requeues on 138).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

from seg.engine import distributed
from seg.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
EXIT_CODES = {int(signum): 128 + int(signum) for signum in STOP_SIGNALS}  # 130, 143, 138


class StopRequests:
    """Signal handlers that record a stop request instead of raising inside whatever runs (a backward pass, a save).

    The first signal asks for a stop; a second one says that the run is finishing its step or saving and waits; a
    third restores the signal's default action and sends it again, which kills the process without saving.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self.received = 0
        self.saving = False
        self._previous: Dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received += 1
        if self.signum is None:
            self.signum = signum
            return
        name = signal.Signals(signum).name
        if self.received >= 3:
            print(f"{name} a third time: killed without saving", file=sys.stderr, flush=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        doing = "saving checkpoints/last.pt" if self.saving else "finishing the current iteration, then saving"
        print(f"{name}: {doing}; waiting for it (send it once more to kill without saving)", file=sys.stderr,
              flush=True)


class Coordinator:
    """After each step: whether to stop (a signal reached any rank) and whether the time-based checkpoint is due
    (rank 0's clock), the same answer on every rank.

    One process decides alone. Under DDP the two flags are all-reduced (max) on a CPU (gloo) group without waiting:
    the result of the reduction started after step i is read after step i+1, when it has long arrived, so the loop
    never stalls for it and every rank acts at the same iteration, one step after the request.
    """

    def __init__(self, requests: StopRequests, every_min: float, world: int, is_main: bool):
        self.requests, self.every_s, self.is_main = requests, every_min * 60, is_main
        self.group = _cpu_group() if world > 1 else None
        self.distributed = world > 1
        self.last_save = time.monotonic()
        self.asked = False  # rank 0 asked for the time-based checkpoint and it is not written yet
        self.pending: Optional[Tuple[object, torch.Tensor]] = None

    def saved(self) -> None:
        """``last.pt`` was written (for any reason): the time-based interval starts again."""
        self.last_save, self.asked = time.monotonic(), False

    def _local(self) -> Tuple[int, int]:
        due = (self.is_main and not self.asked and self.every_s > 0
               and time.monotonic() - self.last_save >= self.every_s)
        self.asked = self.asked or due
        return self.requests.signum or 0, int(due)

    def after_step(self) -> Tuple[Optional[int], bool]:
        """``(signal number or None, time-based checkpoint due)``, equal on every rank."""
        if not self.distributed:
            signum, due = self._local()
            return signum or None, bool(due)
        flags = torch.tensor(self._local(), dtype=torch.int64)
        work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        distributed.keep(work, flags)
        previous, self.pending = self.pending, (work, flags)
        if previous is None:
            return None, False
        previous[0].wait()
        signum, due = previous[1].tolist()
        return signum or None, bool(due)

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, *exc) -> None:
        """Wait for the reduction still in flight: no collective may be left pending when the group is destroyed."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            if exc[0] is None or exc[0] is Interrupted:
                pending[0].wait()


def _cpu_group():
    """The default group when it is gloo, else a gloo group beside NCCL: the flags never touch the GPU stream."""
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def exit_code(signum: int) -> int:
    return EXIT_CODES.get(int(signum), 128 + int(signum))
