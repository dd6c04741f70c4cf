"""resume=auto through train.py: a fresh run where the run folder has no checkpoints/last.pt, the continuation where
it has one, and a folder held by a live training: waited for up to resume_wait_s, then refused naming the holder."""

import os
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, losses_from_log, run_script, tiny_overrides

from seg.config import ConfigError, validate_train
from seg.engine.runlock import RunLock

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="flock")


def test_auto_starts_fresh_then_continues_after_the_holder_ends(tmp_path, monkeypatch):
    """The second command is the first one without train.stop_at (a restarted job's command is its first): it waits
    for the folder's holder (this test) to end, then continues the run from its last.pt; its weights and
    losses are those of one uninterrupted run."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads in every run: exact resumes
    data = tmp_path / "data"
    settings = {"train.iters": 4, "train.eval_every": 0, "train.ckpt_every": 0}
    straight = tmp_path / "straight"
    run_script("train.py", [*tiny_overrides(data, **settings), f"hydra.run.dir={straight}"])
    run = tmp_path / "run"
    run_script("train.py", [*tiny_overrides(data, **{**settings, "train.iters": 4, "train.stop_at": 2}),
                            "resume=auto", f"hydra.run.dir={run}"])
    log = (run / "train.log").read_text()
    assert log.count(f"resume=auto: no checkpoints/last.pt in {run}: starting a new run") == 1
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2

    waiting = f"resume=auto: {run} is held by another training; waiting up to resume_wait_s=120 s"
    lock = RunLock(run).acquire()  # a training still ending in the folder
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *tiny_overrides(data, **settings),
                                "resume=auto", "resume_wait_s=120", f"hydra.run.dir={run}"],
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while waiting not in (run / "train.log").read_text():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the second command never waited for the folder"
            time.sleep(0.1)
        time.sleep(1)  # it keeps waiting while the folder is held
        assert process.poll() is None
        lock.release()  # the holder ends: the waiting command goes on
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    finally:
        lock.release()
        if process.poll() is None:
            process.kill()
    log = (run / "train.log").read_text()
    assert log.count(waiting) == 1
    assert log.count(f"resume=auto: continuing from {run / 'checkpoints' / 'last.pt'}") == 1
    assert log.index("waiting up to resume_wait_s") < log.index("resume=auto: continuing from")
    assert "resuming" in log and "at iteration 2" in log
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert losses_from_log(run / "train.log") == losses_from_log(straight / "train.log")


def test_auto_refuses_a_folder_held_longer_than_resume_wait_s(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):  # a live training in the folder (this process) that does not end
        result = run_script("train.py", [*tiny_overrides(tmp_path / "data"), "resume=auto", "resume_wait_s=1",
                                         f"hydra.run.dir={run}"], check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith(f"error: resume=auto waited resume_wait_s=1 s: another training is running in {run} "
                                f"(host ")
    assert f"PID {os.getpid()}," in errors[0]
    assert not (run / "checkpoints").exists()


def test_resume_wait_s_is_checked(cfg_train):
    cfg = cfg_train(resume="auto", resume_wait_s=-5)
    with pytest.raises(ConfigError, match=r"^resume_wait_s must be a finite number >= 0, got -5.0$"):
        validate_train(cfg)
    assert cfg_train()["resume_wait_s"] == 120
