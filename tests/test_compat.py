"""The supported torch range: checkpoints every supported torch saves and loads, written by one and resumed by another.

.ci/run runs this suite under the newest torch and under the oldest supported one, and sets
``SEG_OTHER_TORCH_PYTHON`` to the other environment's python, so that a checkpoint written by one version is resumed
by the other in both directions.
"""

import os
import pickle
import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, compose_config, losses_from_log, run_script, tiny_overrides

from seg.engine.checkpoint import capture_rng, restore_rng, save_checkpoint
from seg.engine.trainer import train
from seg.io import UnsafeFileError, safe_load
from seg.models import build_model

OTHER_PYTHON = os.environ.get("SEG_OTHER_TORCH_PYTHON")
# Tensor dtypes a checkpoint may hold: torch 2.4 and 2.5 save these, and refuse uint16/32/64 ("dtype torch.uint32
# is not recognized"). float8 they save too, but nothing in a checkpoint needs it.
LOADABLE_BY_OLD_TORCH = {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                         torch.int16, torch.int8, torch.uint8, torch.bool}
# Deterministic up to kernel rounding: dropout masks differ between torch versions (their bernoulli sampling
# changed), so the ASPP dropout is off and there is no auxiliary head (its FCN head has a fixed dropout).
RESUME = {"train.iters": 4, "train.eval_every": 0, "train.ckpt_every": 2, "model.dropout": 0}


def _leaves(value, where="checkpoint"):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{where}[{i}]")
    else:
        yield where, value


def test_checkpoint_holds_only_types_every_supported_torch_loads(tmp_path, cfg_train):
    train(cfg_train(**{"model.aux_loss": "true"}), tmp_path / "run")
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        leaves = list(_leaves(state))
        dtypes = {value.dtype for _, value in leaves if isinstance(value, torch.Tensor)}
        assert dtypes <= LOADABLE_BY_OLD_TORCH, dtypes
        others = [(where, type(value)) for where, value in leaves if not isinstance(value, torch.Tensor)
                  and type(value) not in (type(None), bool, int, float, str)]
        assert not others
        assert state["rng"]["numpy"][1].dtype == torch.int64 and state["rng"]["numpy"][1].shape == (624,)


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    np.random.seed(3), random.seed(3), torch.manual_seed(3)
    model = build_model("resnet18", 2)
    save_checkpoint(tmp_path / "c.pt", model=model, config={}, class_names=["a", "b"], palette=None, iteration=0)
    expected = (np.random.random(5), random.random(), torch.rand(3))
    np.random.seed(4), random.seed(4), torch.manual_seed(4)
    restore_rng(safe_load(tmp_path / "c.pt")["rng"])
    actual = (np.random.random(5), random.random(), torch.rand(3))
    assert np.array_equal(actual[0], expected[0]) and actual[1] == expected[1] and torch.equal(actual[2], expected[2])


def test_rng_state_of_older_checkpoints_still_restores():
    """Checkpoints written before the fix hold numpy's key as a uint32 tensor."""
    np.random.seed(5)
    state = capture_rng()
    state["numpy"][1] = torch.from_numpy(np.random.get_state()[1].copy())
    assert state["numpy"][1].dtype == torch.uint32
    expected = np.random.random(4)
    np.random.seed(6)
    restore_rng(state)
    assert np.array_equal(np.random.random(4), expected)


def test_save_refuses_what_an_older_torch_cannot_load(tmp_path):
    model = build_model("resnet18", 2)
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]: torch.uint32 is not loadable by every supported"):
        save_checkpoint(tmp_path / "c.pt", model=model, config={}, class_names=["a", "b"], palette=None,
                        iteration=0, extra={"extra": torch.zeros(2, dtype=torch.uint32)})
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]\[0\]: float64 is not loadable"):  # numpy's, not float
        save_checkpoint(tmp_path / "c.pt", model=model, config={}, class_names=["a", "b"], palette=None,
                        iteration=0, extra={"extra": [np.float64(0.5)]})
    assert not list(tmp_path.iterdir())


def test_a_dtype_this_torch_cannot_read_is_one_line(tmp_path, monkeypatch):
    """torch 2.4's own refusal of a uint32 tensor (a file written by a newer torch), reworded."""
    refusal = ("Weights only load failed. This file can still be loaded, to do so you have two options \n\t(1) "
               "Re-running `torch.load` with `weights_only` set to `False` ...\n\tWeightsUnpickler error: Unsupported "
               "global: GLOBAL torch.uint32 was not an allowed global by default. Please use "
               "`torch.serialization.add_safe_globals([uint32])` to allowlist this global if you trust this class.")
    path = tmp_path / "new.pt"
    torch.save({"key": torch.zeros(1)}, path)  # a real torch file, so that it reaches torch.load

    def old_torch_load(*args, **kwargs):
        raise pickle.UnpicklingError(refusal)

    monkeypatch.setattr(torch, "load", old_torch_load)
    with pytest.raises(UnsafeFileError, match=rf"^cannot read checkpoint {re.escape(str(path))} with torch .*: it "
                                              r"holds torch.uint32 tensors, which this torch cannot load; load it "
                                              r"with the newer torch that wrote it$"):
        safe_load(path)


def test_oldest_ci_environment_pins_the_declared_floor():
    """.ci/run's oldest environment tests exactly the lowest versions pyproject.toml admits."""
    tomllib = pytest.importorskip("tomllib")
    declared = dict(re.fullmatch(r"(torch|torchvision)>=([\d.]+)", dep).groups()
                    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                    if dep.startswith("torch"))
    pins = dict(re.fullmatch(r"(\S+)==(\S+)", line).groups()
                for line in (REPO / ".ci" / "oldest.txt").read_text().splitlines() if line and line[0] != "#")
    assert declared == pins and set(pins) == {"torch", "torchvision"}


# -- across versions (.ci/run sets SEG_OTHER_TORCH_PYTHON) -------------------------------------------------------

def _other_torch_version() -> str:
    return subprocess.run([OTHER_PYTHON, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


def _train(python, run_dir: Path, data: Path, **extra):
    overrides = tiny_overrides(data, **RESUME, **extra)
    if python is None:
        return train(compose_config("train", overrides), run_dir)
    run_script("train.py", [*overrides, f"hydra.run.dir={run_dir}"], launcher=[python])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, data_root):
    """The uninterrupted run under this torch: the reference both resumed runs are compared with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    _train(None, run, data_root)
    return run


@pytest.mark.skipif(not OTHER_PYTHON, reason="SEG_OTHER_TORCH_PYTHON is not set (.ci/run sets it to the python of "
                                             "the other end of the supported torch range)")
@pytest.mark.parametrize("writer", ["this torch", "the other torch"])
def test_checkpoint_resumes_under_the_other_torch(tmp_path, data_root, straight_run, writer):
    other = _other_torch_version()
    assert other != torch.__version__, "SEG_OTHER_TORCH_PYTHON runs this same torch"
    run, data = tmp_path / "run", data_root
    first, second = (None, OTHER_PYTHON) if writer == "this torch" else (OTHER_PYTHON, None)
    _train(first, run, data, **{"train.stop_at": 2})
    written = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert written["iteration"] == 2
    assert written["versions"]["torch"] == (torch.__version__ if first is None else other)
    _train(second, run, data, resume=run / "checkpoints" / "last.pt")

    resumed = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    reference = torch.load(straight_run / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["iteration"] == reference["iteration"] == 4
    assert resumed["versions"]["torch"] == (torch.__version__ if second is None else other)
    assert "resuming" in (run / "train.log").read_text()
    assert resumed["sampler"] == reference["sampler"]
    assert [resumed["scheduler"][k] for k in ("last_epoch", "_last_lr")] == [reference["scheduler"][k]
                                                                          for k in ("last_epoch", "_last_lr")]
    # The uninterrupted run's losses up to the two versions' kernel rounding (about 1e-3 after four steps). A
    # resume that lost the momentum changes the fourth loss by about 9%; one at the wrong data position changes
    # the third by far more.
    losses, expected = losses_from_log(run / "train.log"), losses_from_log(straight_run / "train.log")
    assert [i for i, _ in losses] == [i for i, _ in expected] == [1, 2, 3, 4]
    assert [loss for _, loss in losses] == pytest.approx([loss for _, loss in expected], rel=1e-2)
