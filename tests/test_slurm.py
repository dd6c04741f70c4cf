"""Training on a real SLURM (a single-node cluster started by ``slurm_cluster.Cluster``) through Hydra's submitit
launcher, as a user runs it: ``train.py hydra/launcher=submitit_slurm ... --multirun``.

Skipped where SLURM, munge, root or hydra-submitit-launcher is missing, but failing in CI (``CI`` set), whose
``.ci/run`` installs them. One torch thread per process everywhere (``OMP_NUM_THREADS=1``), so that runs inside and
outside SLURM compute the same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, losses_from_log, needed, run_script, tiny_overrides

from seg.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SLURM runs on Linux")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
            "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from slurm_cluster import Cluster, missing

    needed("hydra_plugins.hydra_submitit_launcher")
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test SLURM: {reason}")
        pytest.skip(reason)
    with Cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture
def env(cluster, monkeypatch):
    """The test process's environment for the launching command and the jobs (sbatch exports it)."""
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _launch(env, overrides, sweep: Path, launcher: str = "submitit_slurm") -> subprocess.Popen:
    """``train.py hydra/launcher=<launcher> <overrides> --multirun`` in the background."""
    command = [sys.executable, str(REPO / "scripts" / "train.py"), f"hydra/launcher={launcher}", *overrides,
               f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=10", "--multirun"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(launcher: subprocess.Popen, timeout: float = 300):
    try:
        stdout, stderr = launcher.communicate(timeout=timeout)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    return launcher.returncode, stdout, stderr


def _wait_for(launcher: subprocess.Popen, log: Path, text: str, count: int = 1, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not (log.exists() and log.read_text().count(text) >= count):
        assert launcher.poll() is None, f"the launching command ended early: {launcher.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"{text!r} ({count}x) never appeared in {log}"
        time.sleep(0.2)


def _job_id(cluster) -> str:
    ids = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").stdout.split()
    assert len(ids) == 1, ids
    return ids[0]


def test_two_tasks_train_as_torchrun_does(cluster, env, tmp_path):
    """A job of two SLURM tasks (one node, gloo on the CPU; configs/hydra/launcher/slurm_gpus.yaml as for a CPU job)
    forms one process group from SLURM's variables: the losses and weights are those of the same run under
    torchrun, and rank 0 alone writes the run."""
    overrides = tiny_overrides(tmp_path / "data", **{"train.iters": 3, "train.eval_every": 3})
    reference = tmp_path / "torchrun"
    run_script("train.py", [*overrides, f"hydra.run.dir={reference}"], launcher=TORCHRUN)
    sweep = tmp_path / "sweep"
    cpu_job = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1"]
    code, _, stderr = _finish(_launch(env, [*overrides, *cpu_job], sweep, launcher="slurm_gpus"))
    assert code == 0, stderr[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    assert log.count("data: synthetic") == 1  # one rank logs INFO
    assert "resume=auto: no checkpoints/last.pt" in log  # resume null means auto in a SLURM job
    expected = losses_from_log(reference / "train.log")
    assert len(expected) == 3
    assert losses_from_log(sweep / "0" / "train.log") == expected
    a = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(sweep / "0" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_preemption_and_requeue_continue_exactly(cluster, env, tmp_path):
    """``scancel --signal=USR1`` (SLURM's warning before a time limit or a preemption): the job saves last.pt,
    requeues itself and continues with resume=auto; then ``scontrol requeue`` (SIGTERM, then SLURM restarts the
    job): the same. The final weights equal those of an uninterrupted run, bit for bit. The sweep folder holds
    ``${now:...}`` as Hydra's default does: the requeued copies find the same folder."""
    overrides = tiny_overrides(tmp_path / "data", **{"train.iters": 14, "train.eval_every": 0, "train.ckpt_every": 0})
    straight = tmp_path / "straight"
    run_script("train.py", [*overrides, f"hydra.run.dir={straight}"])
    launcher = _launch(env, overrides, tmp_path / "sweep_${now:%H-%M-%S}")
    try:
        sweep = _wait_for_sweep(launcher, tmp_path)
        log = sweep / "0" / "train.log"
        _wait_for(launcher, log, "iter 2/14 loss")
        job = _job_id(cluster)
        cluster.run("scancel", "--signal=USR1", job)
        _start_now(cluster, job)
        _wait_for(launcher, log, "resume=auto: continuing from")
        first = load_checkpoint(sweep / "0" / "checkpoints" / "last.pt")["iteration"]
        _wait_for(launcher, log, f"iter {first + 2}/14 loss")
        cluster.run("scontrol", "requeue", job)
        _start_now(cluster, job)
        _wait_for(launcher, log, "resume=auto: continuing from", count=2)
        code, _, stderr = _finish(launcher)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert code == 0, stderr[-3000:]
    text = log.read_text()
    assert 2 <= first < 14
    assert f"interrupted at iteration {first}/14" in text and f"requeued SLURM job {job}" in text
    assert text.count("interrupted at iteration") == 2  # USR1, then the SIGTERM of scontrol requeue
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(sweep / "0" / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 14
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert losses_from_log(log) == losses_from_log(straight / "train.log")


def _start_now(cluster, job: str, timeout: float = 120) -> None:
    """SLURM holds a requeued job for 120 s (``BeginTime``); the test lets it start at once."""
    deadline = time.time() + timeout
    while cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip() != "PENDING":
        assert time.time() < deadline, f"job {job} was not requeued"
        time.sleep(0.2)
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")


def _wait_for_sweep(launcher, tmp_path: Path, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while True:
        found = list(tmp_path.glob("sweep_*"))
        if found:
            assert len(found) == 1
            return found[0]
        assert launcher.poll() is None, f"the launching command ended early: {launcher.communicate()[1][-3000:]}"
        assert time.time() < deadline, "no sweep folder"
        time.sleep(0.2)


def test_a_failing_job_fails_the_launching_command(cluster, env, tmp_path):
    """A bad value found in the job (not by Hydra's composition) ends the launching command with the error line
    and a non-zero exit, instead of leaving it waiting for a result that never comes."""
    overrides = tiny_overrides(tmp_path / "data", **{"train.lr": -1})
    code, stdout, stderr = _finish(_launch(env, overrides, tmp_path / "sweep"), timeout=240)
    assert code != 0
    assert "train.lr must be" in stdout + stderr


@pytest.mark.parametrize("with_scontrol", [True, False])
@pytest.mark.parametrize("nodelist", ["node[003-005,9],gpu1", "gpu-a100-[12-13]", "vm", "n1,n2"])
def test_torchrun_variables_from_slurm_ones(monkeypatch, nodelist, with_scontrol):
    """What the tasks of a two-node ``srun`` step (8 tasks, this one the third on the second node) set for torchrun's
    process group; the master is the first host as submitit's node-list parser expands it, through ``scontrol show
    hostnames`` or, without scontrol, the module's own expansion."""
    submitit = needed("submitit")
    from seg.engine import slurm

    variables = {"SLURM_PROCID": "6", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "2", "SLURM_JOB_ID": "4242",
                 "SLURM_STEP_NODELIST": nodelist, "SLURM_JOB_NODELIST": nodelist,
                 "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    expected_master = submitit.slurm.slurm.SlurmJobEnvironment().hostnames[0]
    if not with_scontrol:
        monkeypatch.setenv("PATH", "")
    assert slurm.torchrun_environment() == {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4",
                                            "MASTER_ADDR": expected_master, "MASTER_PORT": str(20000 + 4242)}
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # one task: no process group
    assert slurm.torchrun_environment() is None
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")  # the batch script, or salloc's shell: not a step
    assert slurm.torchrun_environment() is None
