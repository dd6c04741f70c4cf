"""Shared test helpers: compose the real Hydra configs and run the real scripts on tiny settings."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from seg.config import model_kwargs
from seg.data import SYNTHETIC_CLASSES
from seg.data.voc import voc_palette
from seg.engine.checkpoint import save_checkpoint
from seg.models import build_model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def needed(name: str):
    """Import an optional package a test needs (onnx, timm): skipped where it is missing, but a failure in CI (``CI``
    is set), where the dev extra installs it and a skip would hide a broken feature."""
    if os.environ.get("CI"):
        return importlib.import_module(name)
    import pytest

    return pytest.importorskip(name)


def tiny_overrides(data_root: Path, **extra) -> List[str]:
    """A run that takes seconds on a CPU: resnet18, 64 px synthetic images, a few iterations."""
    values = {
        "backbone": "resnet18", "device": "cpu",
        "dataset.root": str(data_root), "dataset.image_size": 64, "dataset.num_train": 8, "dataset.num_val": 3,
        "train.crop_size": 64, "train.batch_size": 2, "train.iters": 2, "train.eval_every": 2,
        "train.ckpt_every": 2, "train.log_every": 1, "train.num_workers": 0, "train.tb_images": 1,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def compose_config(config_name: str, overrides: List[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def run_script(script: str, args: List[str], launcher: List[str] = (), timeout: int = 300,
               check: bool = True, preexec_fn=None) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` as a user does; ``preexec_fn`` runs in the child before it starts (e.g. to set a
    resource limit)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    command = [*launcher] if launcher else [sys.executable]
    result = subprocess.run([*command, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=REPO, preexec_fn=preexec_fn)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def losses_from_log(path) -> List[Tuple[int, float]]:
    """``(iteration, loss)`` from every loss line of a run's train.log."""
    return [(int(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"iter (\d+)/\d+ loss (\S+)", Path(path).read_text())]


def tiny_checkpoint(path, data_root, num_classes=6, **overrides):
    """A checkpoint of an untrained tiny model (no training run needed) for the synthetic dataset."""
    cfg = compose_config("train", tiny_overrides(data_root, **{"dataset.num_classes": num_classes, **overrides}))
    torch.manual_seed(0)
    model = build_model(**model_kwargs(cfg, num_classes))
    save_checkpoint(path, model=model, config=cfg, class_names=list(SYNTHETIC_CLASSES[:num_classes]),
                    palette=voc_palette().tolist(), iteration=0)
    return path


# --- dataset=folder -----------------------------------------------------------------------------------------------

FOLDER_CLASSES = ["background", "crack", "rust"]
FOLDER_COLOURS = [[0, 0, 0], [250, 50, 50], [40, 200, 90]]
MASK_FORMATS = ("palette", "gray", "rgb_list", "csv", "labelmap", "binary")


def write_folder(root: Path, fmt: str = "palette", count: int = 8, size: int = 64, seed: int = 0, start: int = 0):
    """``root/images`` + ``root/masks`` in mask format ``fmt`` (nested sub-folders, mixed image suffixes).

    Returns ``({stem: expected class-index mask}, dataset options that read it)``. Labels come from the synthetic
    renderer (3 classes; index formats keep its 255 ignore band, colour formats have none).
    """
    import numpy as np
    from PIL import Image

    from seg.data.synthetic import render

    colour = fmt in ("rgb_list", "csv", "labelmap")
    expected = {}
    for index in range(start, start + count):
        image, label = render(np.random.default_rng([seed, index]), size, 3, 3, (0.3, 0.6), border=0 if colour else 1)
        if fmt == "binary":  # foreground (any shape) 255, background (and the ignore band) 0
            label = np.where((label > 0) & (label < 255), 255, 0).astype(np.uint8)
        stem = f"{'ab'[index % 2]}/img_{index:03d}"
        for sub in ("images", "masks"):
            (root / sub / stem).parent.mkdir(parents=True, exist_ok=True)
        suffix = (".jpg", ".PNG", ".jpeg")[index % 3]
        Image.fromarray(image).save(root / "images" / f"{stem}{suffix}", format="PNG" if suffix == ".PNG" else "JPEG")
        if colour:
            Image.fromarray(np.array(FOLDER_COLOURS, dtype=np.uint8)[label]).save(root / "masks" / f"{stem}.png")
        else:
            mask = Image.fromarray(label)
            if fmt == "palette":
                palette = FOLDER_COLOURS + [[i, i, i] for i in range(3, 256)]
                mask.putpalette([v for rgb in palette for v in rgb])
            mask.save(root / "masks" / f"{stem}.png")
        expected[stem] = np.where(label == 255, 1, label).astype(np.uint8) if fmt == "binary" else label
    options = {"palette": {"num_classes": 3}, "gray": {"class_names": FOLDER_CLASSES},
               "rgb_list": {"colors": FOLDER_COLOURS, "class_names": FOLDER_CLASSES},
               "csv": {"colors": "classes.csv"}, "labelmap": {"colors": str(root / "labelmap.txt")},
               "binary": {"num_classes": 2, "label_map": {255: 1}}}[fmt]
    if fmt == "csv":
        (root / "classes.csv").write_text("name,r,g,b\n" + "".join(
            f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(FOLDER_CLASSES, FOLDER_COLOURS)))
    if fmt == "labelmap":
        (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
            f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in zip(FOLDER_CLASSES, FOLDER_COLOURS)))
    return expected, options


def folder_overrides(root: Path, options: dict, **extra) -> List[str]:
    """A tiny training run (resnet18, 64 px, 2 iterations) on a folder written by ``write_folder``."""
    values = {"backbone": "resnet18", "device": "cpu", "dataset": "folder", "dataset.root": str(root),
              "train.crop_size": 64, "train.batch_size": 2, "train.iters": 2, "train.eval_every": 2,
              "train.ckpt_every": 2, "train.log_every": 1, "train.num_workers": 0, "train.tb_images": 0}
    values.update({f"dataset.{k}": v for k, v in options.items()})
    values.update(extra)
    return [f"{k}={_hydra_value(v)}" for k, v in values.items()]


def _hydra_value(value) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    return str(value)


def rank_pid(launcher_pid: int, rank: str) -> int:
    """The PID of torchrun's worker with ``RANK=rank`` (from /proc: Linux only)."""
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under {launcher_pid}")
