"""Training under SLURM through Hydra's submitit launcher (``hydra/launcher=submitit_slurm``; docs/slurm.md).

One SLURM task per process: submitit runs ``srun`` with ``tasks_per_node`` tasks on each node and every task calls
the training function, so the process group comes from SLURM's own variables (``SLURM_PROCID``,
``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``, the first host of ``SLURM_STEP_NODELIST``), turned into torchrun's
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) so that ``seg.engine.distributed`` starts
it as it does under torchrun. No torchrun inside the job: it would be a second launcher between srun and the
training, with its own restarts and signal forwarding, and submitit's pickled job would run in its agent instead of
in the task that SLURM signals.

Preemption and time limits: SLURM sends ``SIGUSR1`` ``signal_delay_s`` seconds before it stops the job
(``--signal=USR1@<signal_delay_s>``; submitit asks for ``SUBMITIT_PREEMPT_SIGNAL``, which ``use_usr1`` sets); the
trainer saves ``last.pt`` at the end of the step and stops with exit code 138, and rank 0 requeues the job
(``scontrol requeue``). The requeued job runs the same pickled Hydra job into the same run directory, where
``resume=auto`` continues from ``checkpoints/last.pt``. ``scontrol requeue`` from outside sends ``SIGTERM``: the
trainer saves and stops (143) and SLURM requeues the job itself.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Dict, Optional

log = logging.getLogger(__name__)

PREEMPT_SIGNAL = "USR1"  # the trainer's checkpoint-and-stop signal (seg.engine.interrupt), 138 on exit
PREEMPTED_EXIT = 128 + 10  # SIGUSR1's exit code
PORT_BASE, PORT_RANGE = 20000, 20000  # MASTER_PORT from the job id, when none is set


def use_usr1() -> None:
    """Ask submitit for ``SIGUSR1`` as SLURM's warning signal (its default, ``SIGUSR2``, is none the trainer stops
    on). Called before the launcher imports submitit; an explicit ``SUBMITIT_PREEMPT_SIGNAL`` is kept."""
    os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", PREEMPT_SIGNAL)


def requeueable() -> bool:
    """Whether this process is a task of a job that submitit submitted to SLURM: a copy that SLURM may requeue, so
    ``resume`` null means ``auto`` there."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def in_slurm_step() -> bool:
    """Whether this process is a task of an ``srun`` step (the batch script itself has no step variables)."""
    return "SLURM_STEP_NUM_TASKS" in os.environ and "SLURM_PROCID" in os.environ


def torchrun_environment() -> Optional[Dict[str, str]]:
    """torchrun's variables for this SLURM task, or None outside an ``srun`` step of more than one task."""
    if not in_slurm_step() or int(os.environ["SLURM_STEP_NUM_TASKS"]) < 2:
        return None
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "localhost")
    job = os.environ.get("SLURM_JOB_ID", "0")
    tasks_here = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0]
    return {
        "RANK": os.environ["SLURM_PROCID"],
        "WORLD_SIZE": os.environ["SLURM_STEP_NUM_TASKS"],
        "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": tasks_here,
        "MASTER_ADDR": os.environ.get("MASTER_ADDR") or first_host(nodes),
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(PORT_BASE + int(job) % PORT_RANGE),
    }


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list (``node[003-005,9],gpu1`` -> ``node003``), as ``scontrol show
    hostnames`` expands it (the same expansion without scontrol, e.g. for a list without brackets)."""
    try:
        result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                timeout=30)
        if result.returncode == 0 and result.stdout.split():
            return result.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist.split("]")[0] + "]"
    if "[" not in head:
        return head
    prefix, ranges = head.rstrip("]").split("[", 1)
    return prefix + ranges.split(",")[0].split("-")[0]


def adopt_slurm_environment() -> bool:
    """Under ``srun`` with several tasks and without torchrun's variables: set them from SLURM's (above). Returns
    whether it did."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return False
    env = torchrun_environment()
    if env is None:
        return False
    os.environ.update(env)
    return True


def requeue_after(exit_code: int) -> bool:
    """After a stop on ``SIGUSR1`` (``exit_code`` 138) in a submitit SLURM job, requeue the job from rank 0 (its
    checkpoint is written): the requeued copy runs the same Hydra job in the same run directory, where
    ``resume=auto`` continues. Returns whether this process requeued it."""
    if exit_code != PREEMPTED_EXIT or not requeueable():
        return False
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return False
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        log.error("could not requeue SLURM job %s (scontrol requeue: %s): resume it with resume=auto", job,
                  result.stderr.strip() or f"exit {result.returncode}")
        return False
    log.warning("requeued SLURM job %s: it continues from checkpoints/last.pt (resume=auto)", job)
    return True
