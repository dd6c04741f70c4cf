"""``resume=auto``: continue the run in this run directory if it has a ``checkpoints/last.pt``, else start fresh.

Made for jobs that a scheduler restarts with the same command and folder (a requeued SLURM job, a restarted
container): the command never changes, the folder says where it stands. A previous copy of the job may still be
ending there (saving ``last.pt``, its data-loader workers exiting) when the new one starts, so the decision waits
for the folder's lock (``seg.engine.runlock``) up to ``resume_wait_s`` seconds, then refuses with the holder's line:
a live second training in the folder is never joined nor overwritten. Under DDP rank 0 decides and tells the others.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from seg.engine import distributed
from seg.engine.runlock import RunFolderBusy, RunLock

log = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_WAIT_S = 120.0  # a stopped job's copy ends within SLURM's KillWait (30 s by default) after its SIGTERM
POLL_S = 0.5


def wait_for_folder(run_dir: Path, wait_s: float) -> None:
    """Return once no process holds ``run_dir``'s lock; ``RunFolderBusy`` (naming the holder and ``resume_wait_s``)
    when one still does after ``wait_s`` seconds. The lock is not kept: the trainer takes it right after."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            RunLock(run_dir).acquire().release()
            return
        except RunFolderBusy as busy:
            if time.monotonic() >= deadline:
                raise RunFolderBusy(f"resume=auto waited resume_wait_s={wait_s:g} s: {busy}") from None
            if not said:
                log.info("resume=auto: %s is held by another training; waiting up to resume_wait_s=%g s for it "
                         "to end", run_dir, wait_s)
                said = True
            time.sleep(POLL_S)


def resolve(run_dir: Path, wait_s: float) -> Optional[str]:
    """The checkpoint ``resume=auto`` means in ``run_dir`` (None: a fresh run), the same on every rank."""
    run_dir = Path(run_dir)
    decision = [None, None]  # [path or None, error message or None]
    if distributed.is_main():
        try:
            if run_dir.is_dir():
                wait_for_folder(run_dir, wait_s)
            last = run_dir / "checkpoints" / "last.pt"
            decision[0] = str(last) if last.is_file() else None
        except RunFolderBusy as busy:
            decision[1] = str(busy)
    if distributed.world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    if decision[1] is not None:
        raise RunFolderBusy(decision[1])
    if decision[0] is None:
        log.info("resume=auto: no checkpoints/last.pt in %s: starting a new run", run_dir)
    else:
        log.info("resume=auto: continuing from %s", decision[0])
    return decision[0]
