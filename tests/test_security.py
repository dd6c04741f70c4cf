"""Untrusted and broken inputs: a pickle carrying code never runs; bad files get a one-line error."""

import numpy as np
import pytest
import torch
from helpers import compose_config, run_script, tiny_checkpoint
from PIL import Image

from seg.config import ConfigError
from seg.engine.checkpoint import CheckpointError
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import predict
from seg.errors import MissingFileError
from seg.export import export_checkpoint, export_model
from seg.io import UnsafeFileError
from seg.models import build_model


class Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"weight": torch.zeros(1)}, "config": Payload(marker), "class_names": ["a"],
                "iteration": 0}, path)
    return path, marker


def test_the_payload_is_real(malicious):
    path, marker = malicious
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


def _run_all_entry_points(ckpt, tmp_path):
    with pytest.raises(UnsafeFileError, match="refusing to load checkpoint"):
        evaluate_checkpoint(compose_config("evaluate", [f"ckpt={ckpt}"]), tmp_path / "eval")
    with pytest.raises(UnsafeFileError, match="refusing to load checkpoint"):
        export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={tmp_path / 'm.ts'}"]))
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    with pytest.raises(UnsafeFileError, match="refusing to load checkpoint"):
        predict(compose_config("predict", [f"ckpt={ckpt}", f"input={images}", f"output={tmp_path / 'out'}"]))


def test_code_in_a_checkpoint_is_refused_and_never_runs(malicious, tmp_path):
    path, marker = malicious
    _run_all_entry_points(path, tmp_path)
    assert not marker.exists()
    result = run_script("evaluate.py", [f"ckpt={path}", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1
    assert "error: refusing to load checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeFileError, match="truncated or corrupt"):
        evaluate_checkpoint(compose_config("evaluate", [f"ckpt={ckpt}"]), tmp_path / "eval")


def test_missing_files_and_keys(tmp_path):
    with pytest.raises(MissingFileError, match="checkpoint not found: .*nope.pt"):
        evaluate_checkpoint(compose_config("evaluate", [f"ckpt={tmp_path / 'nope.pt'}"]), tmp_path)
    with pytest.raises(ConfigError, match="^ckpt is required"):
        evaluate_checkpoint(compose_config("evaluate", []), tmp_path)
    with pytest.raises(MissingFileError, match="model not found"):
        predict(compose_config("predict", [f"ckpt={tmp_path / 'nope.ts'}", f"input={tmp_path}", "output=o"]))


def test_wrong_kinds_of_file(tmp_path):
    plain = tmp_path / "state_dict.pt"
    torch.save(build_model("resnet18", 3).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        evaluate_checkpoint(compose_config("evaluate", [f"ckpt={plain}"]), tmp_path)
    exported = tmp_path / "model.ts"
    export_model(build_model("resnet18", 3), exported, check_sizes=[[64, 64]])
    with pytest.raises(CheckpointError, match="is an exported TorchScript model, not a training checkpoint"):
        evaluate_checkpoint(compose_config("evaluate", [f"ckpt={exported}"]), tmp_path)


def test_class_count_differs_from_the_dataset(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data", num_classes=3)
    config = compose_config("evaluate", [f"ckpt={ckpt}", "+dataset.num_classes=4"])
    with pytest.raises(CheckpointError, match=r"predicts 3 classes \(background, disc, square\) but dataset "
                                              r"synthetic split 'val' has 4"):
        evaluate_checkpoint(config, tmp_path / "eval")
