"""Resume under changed hyper-parameters, torn run files, full disks and read-only run folders."""

import errno
import json
import logging
import os
import re
import stat
import threading
from pathlib import Path

import pytest
import torch

from seg.engine import trainer as trainer_module
from seg.engine.checkpoint import load_checkpoint
from seg.engine.step import TrainStep
from seg.engine.trainer import train
from seg.errors import UserError


@pytest.fixture
def config(cfg_train):
    """The tiny training config, evaluating only at the end."""
    return lambda **extra: cfg_train(**{"train.eval_every": 0, **extra})


def _mult(group_name, backbone, head):
    return backbone if group_name.startswith("backbone") else head


def test_resume_applies_changed_hyperparameters(config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(config(**{"train.iters": 8, "train.stop_at": 4, "train.ckpt_every": 4}), run)
    seen = []

    class Recording(TrainStep):
        def __call__(self, *batch):
            seen.append([(g["name"], g["lr"], g["momentum"], g["weight_decay"]) for g in self.optimizer.param_groups])
            return super().__call__(*batch)

    monkeypatch.setattr(trainer_module, "TrainStep", Recording)
    new = {"train.lr": 0.05, "train.iters": 10, "train.warmup_iters": 6, "train.momentum": 0.8,
           "train.weight_decay": 0.001, "train.backbone_lr_mult": 0.1, "train.head_lr_mult": 2.0,
           "train.ckpt_every": 0}
    train(config(resume=run / "checkpoints" / "last.pt", **new), run)

    def expected_lr(iteration):
        """Step ``iteration`` (from 1) uses 0.05 * (1 - done / 10) ** 0.9 after ``done`` steps, ramped
        linearly over the first 6 steps: what a fresh run with the new values would use there."""
        done = iteration - 1
        ramp = (done + 1) / 6 if done < 6 else 1.0
        return 0.05 * (1 - done / 10) ** 0.9 * ramp

    assert len(seen) == 6  # iterations 5 to 10
    for iteration, groups in zip(range(5, 11), seen):
        assert {name for name, *_ in groups} == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
        for name, lr, momentum, weight_decay in groups:
            assert lr == pytest.approx(expected_lr(iteration) * _mult(name, 0.1, 2.0), rel=1e-12), (iteration, name)
            assert momentum == 0.8
            assert weight_decay == (0.0 if name.endswith("_no_decay") else 0.001)
    assert seen[0][0][1] == pytest.approx(0.05 * 0.1 * 0.6 ** 0.9 * 5 / 6)  # iteration 5, backbone: about 0.00264

    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 10
    config = state["config"]["train"]
    for group in state["optimizer"]["param_groups"]:  # the checkpoint's optimizer agrees with its config
        mult = _mult(group["name"], config["backbone_lr_mult"], config["head_lr_mult"])
        assert group["initial_lr"] == pytest.approx(config["lr"] * mult, rel=1e-12)
        assert group["momentum"] == config["momentum"]
        assert group["weight_decay"] == (0.0 if group["name"].endswith("_no_decay") else config["weight_decay"])
        assert group["lr"] == 0.0  # poly reaches 0 at the new last iteration
    log = (run / "train.log").read_text()
    assert "resume: config changed: train.lr: 0.02 -> 0.05 (applies from iteration 5 on)" in log
    assert "resume: config changed: train.iters: 8 -> 10 (applies from iteration 5 on)" in log


def test_torn_metrics_line_is_dropped_on_resume(config, tmp_path, caplog):
    run = tmp_path / "run"
    train(config(**{"train.iters": 4, "train.stop_at": 2, "train.eval_every": 1}), run)
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text()
    assert [json.loads(line)["iter"] for line in whole.splitlines()] == [1, 2]
    metrics.write_text(whole + whole.splitlines()[0][:25])  # a kill or a full disk in the middle of a line
    train(config(resume=run / "checkpoints" / "last.pt", **{"train.iters": 4, "train.eval_every": 1}),
          run)
    assert [json.loads(line)["iter"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    assert "metrics.jsonl: dropping an incomplete last line" in caplog.text


def test_leftover_temporary_checkpoints_are_removed(config, tmp_path, caplog):
    run = tmp_path / "run"
    train(config(**{"train.iters": 2}), run)
    checkpoints = run / "checkpoints"
    leftovers = [checkpoints / ".last.tmp.pt", checkpoints / ".best.tmp.pt"]
    for path in leftovers:
        path.write_bytes(b"PK\x03\x04 half a zip")  # what a kill during atomic_save leaves
    keep = checkpoints / "notes.tmp"
    keep.write_text("not ours")
    caplog.set_level("INFO")
    train(config(resume=checkpoints / "last.pt", **{"train.iters": 3}), run)
    assert not any(path.exists() for path in leftovers) and keep.exists()
    assert "removed 2 temporary files of interrupted checkpoint saves" in caplog.text


def test_full_disk_keeps_the_previous_checkpoint(config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(config(**{"train.iters": 2}), run)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real_open = open

    class FullDisk:
        """A file whose writes fail with ENOSPC after 64 kB, as on a disk that fills up during the save."""

        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 65536:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr("seg.io.open", lambda *args, **kwargs: FullDisk(real_open(*args, **kwargs)), raising=False)
    with pytest.raises(UserError) as raised:
        train(config(resume=last, **{"train.iters": 4}), run)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("disk full: could not write ") and str(run / "checkpoints") in message
    assert "the previous" in message and "is intact" in message
    assert message in (run / "train.log").read_text()  # recorded in the run's log, not only on the console
    assert last.read_bytes() == before and load_checkpoint(last)["iteration"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temporary file


def test_resume_into_a_read_only_run_folder_is_one_line(config, tmp_path):
    run = tmp_path / "run"
    train(config(**{"train.iters": 2}), run)
    paths = [run, *run.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    for path in sorted(paths, reverse=True):  # files before their folders
        path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        if os.access(run, os.W_OK):
            pytest.skip("chmod does not stop this user from writing (root)")
        with pytest.raises(UserError, match=rf"^cannot write into the run folder {re.escape(str(run))}") as raised:
            train(config(resume=run / "checkpoints" / "last.pt", **{"train.iters": 4}), run)
        assert "\n" not in str(raised.value)
    finally:
        for path in paths:
            path.chmod(modes[path])
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["iteration"] == 2


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # a thread's traceback
@pytest.mark.parametrize("sink", ["metrics.jsonl", "tensorboard"])
def test_full_disk_while_logging_is_one_line(config, tmp_path, monkeypatch, capfd, sink):
    """A full disk met by a metrics.jsonl append or by TensorBoard's writer thread (not a save) is one line."""
    run = tmp_path / "run"
    train(config(**{"train.iters": 2}), run)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()

    def full(*args, **kwargs):  # TensorBoard's events file: its write fails, in TensorBoard's own thread
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if sink == "tensorboard":
        monkeypatch.setattr("tensorboard.compat.tensorflow_stub.io.gfile.LocalFileSystem.append", full)
    else:  # metrics.jsonl really written, onto a device that is always full (its ENOSPC names no file)
        real_open = Path.open
        monkeypatch.setattr(Path, "open", lambda self, *args, **kwargs: real_open(
            Path("/dev/full") if self.name == "metrics.jsonl" and args[:1] == ("a",) else self, *args, **kwargs))
    capfd.readouterr()
    with pytest.raises(UserError) as raised:
        train(config(resume=last, **{"train.iters": 4, "train.eval_every": 1, "train.log_every": 1}), run)
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in capfd.readouterr().err
    where = run / "metrics.jsonl" if sink == "metrics.jsonl" else run / "tensorboard"
    assert message.startswith(f"disk full: could not write {where}") and f"resume={last}" in message
    assert message in (run / "train.log").read_text()
    assert last.read_bytes() == before


def test_a_setup_error_after_the_run_files_leaves_no_log_handler_or_thread_hook(config, tmp_path):
    handlers, hook = list(logging.getLogger().handlers), threading.excepthook
    with pytest.raises(UserError, match="missing.pt") as raised:  # model.weights is read after the run files open
        train(config(**{"model.weights": str(tmp_path / "missing.pt")}), tmp_path / "run")
    assert logging.getLogger().handlers == handlers and threading.excepthook is hook
    assert str(raised.value) in (tmp_path / "run" / "train.log").read_text()
