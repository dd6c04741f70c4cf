"""Training on dataset=folder: every mask format trains, the binary case, class weights, and the derived split that
training writes into its run directory and checkpoints, reused on resume and by evaluate.py."""

import json
import re

import numpy as np
import pytest
from helpers import (
    FOLDER_CLASSES,
    FOLDER_COLOURS,
    MASK_FORMATS,
    compose_config,
    folder_overrides,
    run_script,
    write_folder,
)
from PIL import Image

from seg.config import ConfigError, validate_train
from seg.data import build_dataset
from seg.engine.checkpoint import load_checkpoint
from seg.engine.trainer import train

# One loss (and class weights) per format, so that every loss also runs in a real training loop.
LOSSES = {"palette": ("ce", "none"), "gray": ("dice", "inverse_log"), "rgb_list": ("ce+dice", "median_frequency"),
          "csv": ("focal", "median_frequency"), "labelmap": ("bootstrap", "none"), "binary": ("ce+dice", "[1,3]")}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_CACHE", str(tmp_path / "cache"))  # class statistics are cached here


@pytest.mark.parametrize("fmt", MASK_FORMATS)
def test_every_mask_format_trains(tmp_path, fmt):
    _, options = write_folder(tmp_path / "data", fmt, count=6)
    loss, weights = LOSSES[fmt]
    names = {"binary": ["class_0", "class_1"], "palette": ["class_0", "class_1", "class_2"]}.get(fmt, FOLDER_CLASSES)
    cfg = compose_config("train", folder_overrides(tmp_path / "data", options, **{
        "train.loss": loss, "train.class_weights": weights, "metrics.exclude_classes": f"[{names[0]}]"}))
    summary = train(cfg, tmp_path / "run")
    record = summary["last_metrics"]
    assert summary["iteration"] == 2 and np.isfinite([loss for _, loss in summary["losses"]]).all()
    assert list(record["per_class_dice"]) == names and record["excluded_classes"] == [names[0]]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["class_names"] == names
    if fmt in ("rgb_list", "csv", "labelmap"):
        assert state["palette"][:3] == FOLDER_COLOURS  # predictions are drawn in the masks' colours
    stored = state["config"]["train"]["class_weights"]
    assert stored == "none" if weights == "none" else (isinstance(stored, list) and len(stored) == len(names))


def test_binary_masks_without_label_map_stop_with_one_line(tmp_path):
    write_folder(tmp_path / "data", "binary", count=4)
    result = run_script("train.py", folder_overrides(tmp_path / "data", {"num_classes": 2}) + [
        f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: mask .*\.png holds only 0 and 255 with 2 classes, but 255 is the ignore value: for "
                        r"0/255 binary masks set dataset\.label_map=\{255:1\} .*", last)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("override, key", [("train.class_weights=median", "train.class_weights"),
                                           ("train.class_weights=[1,-2]", "train.class_weights"),
                                           ("train.loss=lovasz", "train.loss"),
                                           ("metrics.exclude_classes=background", "metrics.exclude_classes")])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must be"):
        validate_train(compose_config("train", [override]))


def test_unknown_excluded_class_and_wrong_weight_count(tmp_path):
    _, options = write_folder(tmp_path / "data", "palette", count=4)
    with pytest.raises(ConfigError, match=r"metrics\.exclude_classes names \['sky'\] that are not classes"):
        train(compose_config("train", folder_overrides(tmp_path / "data", options, **{
            "metrics.exclude_classes": "[sky]"})), tmp_path / "run")
    with pytest.raises(ValueError, match=r"train\.class_weights has 2 values but the dataset has 3 classes"):
        train(compose_config("train", folder_overrides(tmp_path / "data", options, **{
            "train.class_weights": "[1,2]"})), tmp_path / "run")


def _median_frequency(masks, num_classes):
    """Eigen & Fergus's weights computed directly (an independent reference for the trainer's)."""
    pixels = np.zeros(num_classes)
    present_pixels = np.zeros(num_classes)
    for mask in masks:
        labelled = mask[mask != 255]
        for c in range(num_classes):
            if (labelled == c).any():
                pixels[c] += (labelled == c).sum()
                present_pixels[c] += labelled.size
    frequency = pixels / present_pixels
    return list(np.median(frequency) / frequency)


def test_split_and_class_weights_are_recorded_and_reused_by_resume_and_evaluate(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    expected, options = write_folder(data, "palette", count=10)
    settings = {"train.iters": 4, "train.eval_every": 0, "dataset.val_fraction": 0.3,
                "train.class_weights": "median_frequency"}
    train(compose_config("train", folder_overrides(data, options, **settings, **{"train.stop_at": 2})), run)
    train_list = (run / "splits" / "train.txt").read_text().split()
    val_list = (run / "splits" / "val.txt").read_text().split()
    assert len(train_list) == 7 and len(val_list) == 3 and sorted(train_list + val_list) == sorted(expected)
    first = load_checkpoint(run / "checkpoints" / "last.pt")
    assert first["config"]["dataset"]["splits"] == {"train": train_list, "val": val_list}
    weights = first["config"]["train"]["class_weights"]
    assert weights == pytest.approx(_median_frequency([expected[s] for s in train_list], 3))

    # The folder changes: 6 more images (a fresh split would take some into val) and a training mask is redrawn
    # (fresh class weights would differ). The resume, in a new process and even with another seed, keeps both.
    write_folder(data, "palette", count=6, start=10)
    Image.fromarray(np.full((64, 64), 2, np.uint8)).save(data / "masks" / f"{train_list[0]}.png")
    assert len(build_dataset("folder", data, "val", num_classes=3, val_fraction=0.3)) == 5
    result = run_script("train.py", [*folder_overrides(data, options, **settings, seed=5),
                                     f"resume={run / 'checkpoints' / 'last.pt'}",
                                     f"hydra.run.dir={tmp_path / 'resume'}"])
    assert "data: folder train 7 images (train), val 3 images (val)" in result.stdout + result.stderr
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["iteration"] == 4
    assert resumed["config"]["dataset"]["splits"] == first["config"]["dataset"]["splits"]
    assert resumed["config"]["train"]["class_weights"] == weights
    assert (run / "splits" / "val.txt").read_text().split() == val_list

    # evaluate.py reads the recorded val split, not a fresh one of the grown folder.
    run_script("evaluate.py", [f"ckpt={run / 'checkpoints' / 'last.pt'}", "num_workers=0",
                               f"hydra.run.dir={tmp_path / 'eval'}"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 3
