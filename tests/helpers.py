"""Shared test helpers: compose the real Hydra configs and run the real scripts on tiny settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

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
               check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    command = [*launcher] if launcher else [sys.executable]
    result = subprocess.run([*command, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def tiny_checkpoint(path, data_root, num_classes=6, **overrides):
    """A checkpoint of an untrained tiny model (no training run needed) for the synthetic dataset."""
    cfg = compose_config("train", tiny_overrides(data_root, **{"dataset.num_classes": num_classes, **overrides}))
    torch.manual_seed(0)
    model = build_model(**model_kwargs(cfg, num_classes))
    save_checkpoint(path, model=model, config=cfg, class_names=list(SYNTHETIC_CLASSES[:num_classes]),
                    palette=voc_palette().tolist(), iteration=0)
    return path
