"""DDP under faults: the collective timeout is a config key; a stopped rank fails the run after it."""

import datetime
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, compose_config, rank_pid, tiny_overrides

from seg.engine import distributed


def test_ddp_timeout_is_the_configured_one(monkeypatch):
    assert compose_config("train", [])["dist_timeout_min"] == 10
    seen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    distributed.init("cpu", timeout_min=0.5)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(seconds=30)}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo over loopback, /proc")
def test_stopped_rank_fails_the_run_after_the_timeout(tmp_path):
    """SIGSTOP one of two ranks: rank 0 gives up after dist_timeout_min (0.1 min here) with one line in train.log,
    and torchrun ends the stopped rank (SIGTERM, then SIGKILL 30 s later): about 45 s in all."""
    run_dir = tmp_path / "ddp"
    overrides = tiny_overrides(tmp_path / "data", **{"train.iters": 500, "train.eval_every": 0, "train.ckpt_every": 3,
                                                      "dist_timeout_min": 0.1})
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
               "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(REPO / "scripts" / "train.py"),
               *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert launcher.poll() is None and time.time() < deadline, "the run did not reach its first checkpoint"
            time.sleep(0.5)
        os.kill(rank_pid(launcher.pid, "1"), signal.SIGSTOP)
        stopped_at = time.time()
        _, stderr = launcher.communicate(timeout=180)
        elapsed = time.time() - stopped_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert 6 <= elapsed < 150, elapsed
    log = (run_dir / "train.log").read_text()
    assert log.count("rank 0 waited more than dist_timeout_min=0.1 minutes for the other ranks") == 1
    assert "rank 0 waited more than dist_timeout_min=0.1 minutes" in stderr
    from seg.engine.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] % 3 == 0
