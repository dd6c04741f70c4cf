"""Real signals to a real training process: SIGINT, SIGTERM and SIGUSR1 end the run after the step with last.pt at
that iteration, one line and the exit code; the time-based checkpoint; one training per run folder."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, losses_from_log, rank_pid, tiny_overrides

from seg.engine import trainer as trainer_module
from seg.engine.checkpoint import load_checkpoint
from seg.engine.runlock import RunFolderBusy, RunLock
from seg.engine.trainer import train

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, flock, gloo over loopback")

LINE = re.compile(r"^interrupted at iteration (\d+)/(\d+); resume with resume=(\S+)$", re.MULTILINE)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
            "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]


def _start(args, launcher=(sys.executable,)) -> subprocess.Popen:
    """train.py in a new process; one torch thread per DDP rank (as many as the test process otherwise: a resume
    is exact with the same number of threads)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"OMP_NUM_THREADS": "1"} if launcher != (sys.executable,)
                                                     else {})}
    return subprocess.Popen([*launcher, str(REPO / "scripts" / "train.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(process: subprocess.Popen, log: Path, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (log.exists() and text in log.read_text()):
        assert process.poll() is None, f"the run ended early: {process.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"{text!r} never appeared in {log}"
        time.sleep(0.05)


def _interrupt(tmp_path, signum, run, iters=40, at=3, workers=2, **extra):
    overrides = tiny_overrides(tmp_path / "data", **{"train.iters": iters, "train.eval_every": 0,
                                                      "train.ckpt_every": 0, "train.num_workers": workers, **extra})
    process = _start([*overrides, f"hydra.run.dir={run}"])
    try:
        _wait_for(process, run / "train.log", f"iter {at}/{iters} loss")
        # to the whole process group, data-loader workers included, as Ctrl-C in a terminal and SLURM do
        os.killpg(process.pid, signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout, stderr


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 138)])
def test_a_signal_ends_the_run_after_the_step_with_a_checkpoint(tmp_path, signum, code):
    run = tmp_path / "run"
    returncode, stdout, stderr = _interrupt(tmp_path, signum, run)
    assert returncode == code, stderr[-3000:]
    lines = LINE.findall(stdout + stderr)
    assert len(lines) == 1, stderr[-3000:]  # one line, and no traceback from the main process or its workers
    assert "Traceback" not in stdout + stderr
    iteration, total, path = int(lines[0][0]), int(lines[0][1]), Path(lines[0][2])
    assert 3 <= iteration < 40 and total == 40
    assert path == run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    assert state["iteration"] == iteration
    assert losses_from_log(run / "train.log")[-1][0] == iteration  # every trained iteration is logged
    assert not list((run / "checkpoints").glob(".*.tmp.pt"))
    assert f"- interrupted at iteration {iteration}/40; resume with resume={path}" in (run / "train.log").read_text()


def test_resume_after_sigterm_reaches_the_uninterrupted_weights(tmp_path, cfg_train):
    overrides = {"train.iters": 10, "train.eval_every": 0, "train.ckpt_every": 0, "train.num_workers": 2}
    straight = train(cfg_train(**overrides), tmp_path / "straight")
    run = tmp_path / "run"
    returncode, _, stderr = _interrupt(tmp_path, signal.SIGTERM, run, iters=10, at=2)
    assert returncode == 143, stderr[-3000:]
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["iteration"]
    assert 2 <= stopped < 10
    # resume=<run folder>: its checkpoints/last.pt, the path the interrupted run printed (checked above)
    resumed = _start([*tiny_overrides(tmp_path / "data", **overrides), f"resume={run}",
                      f"hydra.run.dir={tmp_path / 'hydra_resume'}"])
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-3000:]
    hydra_log = (tmp_path / "hydra_resume" / "train.log").read_text()
    assert hydra_log.count(f"resume={run} is a run folder: using {run / 'checkpoints' / 'last.pt'}") == 1
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 10
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert straight["losses"] == losses_from_log(run / "train.log")


def test_second_signal_waits_for_the_save_and_a_third_kills(tmp_path):
    """The handlers themselves, under real signals sent to a process in the middle of a (pretended) save."""
    script = (
        "import os, signal, sys, time\n"
        "from seg.engine.interrupt import StopRequests\n"
        "requests = StopRequests(); requests.install(); requests.saving = True\n"
        "for n in range(3):\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
        "    print('after', n + 1, requests.signum, flush=True)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.splitlines() == ["after 1 2", "after 2 2"]  # the third one never returned
    assert result.returncode == -signal.SIGINT
    assert result.stderr.splitlines() == [
        "SIGINT: saving checkpoints/last.pt; waiting for it (send it once more to kill without saving)",
        "SIGINT a third time: killed without saving"]


def test_time_based_checkpoints_without_ckpt_every(cfg_train, tmp_path, monkeypatch):
    saved = []
    real = trainer_module.save_checkpoint

    def recording(path, **kwargs):
        if Path(path).name == "last.pt":  # best.pt follows the evaluations
            saved.append((Path(path).name, kwargs["iteration"]))
        real(path, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", recording)
    base = {"train.iters": 4, "train.eval_every": 0, "train.ckpt_every": 0}
    train(cfg_train(**base, **{"train.ckpt_every_min": 0}), tmp_path / "never")
    assert saved == [("last.pt", 4)]  # the end of the run only
    saved.clear()
    train(cfg_train(**base, **{"train.ckpt_every_min": 0.0001}), tmp_path / "timed")  # 6 ms: after every step
    assert saved == [("last.pt", i) for i in (1, 2, 3, 4)]  # never twice for one iteration (4: also the end)
    saved.clear()
    train(cfg_train(**{**base, "train.ckpt_every": 2}, **{"train.ckpt_every_min": 0.0001}), tmp_path / "both")
    assert saved == [("last.pt", i) for i in (1, 2, 3, 4)]


def test_a_second_training_in_the_same_folder_stops_before_writing(tmp_path):
    run = tmp_path / "run"
    first = _start([*tiny_overrides(tmp_path / "data", **{"train.iters": 200, "train.eval_every": 0,
                                                          "train.ckpt_every": 0}), f"hydra.run.dir={run}"])
    try:
        _wait_for(first, run / "train.log", "iter 2/200 loss")
        first.send_signal(signal.SIGSTOP)  # holds the lock without taking the CPU the second one needs
        second = _start([*tiny_overrides(tmp_path / "data", **{"train.iters": 3}), f"hydra.run.dir={run}"])
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 1
        message = stderr.strip().splitlines()[-1]
        assert message.startswith(f"error: another training is running in {run} (host ")
        assert f"PID {first.pid}, started " in message and "\n" not in message.strip()
        assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGCONT)
        # nothing of a run's was written: no second TensorBoard events file, no checkpoint
        assert len(list((run / "tensorboard").iterdir())) == 1 and not (run / "checkpoints").exists()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
    finally:
        if first.poll() is None:
            first.kill()
    with RunLock(run):  # the holder is gone: its lock went with it
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    first = _start([*tiny_overrides(tmp_path / "data", **{"train.iters": 200, "train.eval_every": 0}),
                    f"hydra.run.dir={run}"])
    try:
        _wait_for(first, run / "train.log", "iter 2/200 loss")
        with pytest.raises(RunFolderBusy, match=f"PID {first.pid}, started "):
            RunLock(run).acquire()
    finally:
        first.kill()
        first.wait()
    assert (run / ".lock").read_text().startswith(f"host {socket.gethostname()}, PID {first.pid}, started ")
    deadline = time.time() + 30  # its data-loader workers (forked with the lock) end a few seconds after it
    while True:
        try:
            RunLock(run).acquire().release()
            break
        except RunFolderBusy:
            assert time.time() < deadline, "the lock outlived its holder"
            time.sleep(0.2)


def test_ddp_one_ranks_signal_stops_every_rank_at_one_iteration(tmp_path):
    run = tmp_path / "ddp"
    overrides = tiny_overrides(tmp_path / "data", **{"train.iters": 200, "train.eval_every": 0,
                                                      "train.ckpt_every": 0})
    launcher = _start([*overrides, f"hydra.run.dir={run}"], launcher=TORCHRUN)
    try:
        _wait_for(launcher, run / "train.log", "iter 3/200 loss", timeout=240)
        os.kill(rank_pid(launcher.pid, "1"), signal.SIGTERM)  # rank 1 only
        _, stderr = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0  # torchrun reports its workers' 143 as a failure
    log = (run / "train.log").read_text()
    lines = re.findall(r"- interrupted at iteration (\d+)/(\d+); resume with resume=(\S+)\n", log)
    assert len(lines) == 1, stderr[-3000:]
    iteration = int(lines[0][0])
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == iteration
    assert losses_from_log(run / "train.log")[-1][0] == iteration
    # Both ranks stopped on the signal, none failed: each exit torchrun reports is the signal's 143 (or, for a rank
    # still finishing when the agent tears the group down, its SIGTERM: -15); which it lists varies with timing.
    codes = [int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", stderr)]
    assert 143 in codes and set(codes) <= {143, -15}, stderr[-3000:]
    assert "Timed out" not in stderr and "timed out" not in log
