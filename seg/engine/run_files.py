"""The files a training run writes (rank 0 only): train.log, metrics.jsonl, TensorBoard events.

Checkpoints are written by ``seg.engine.checkpoint``; this class only knows where they go.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import numpy as np


class RunFiles:
    """What rank 0 writes: train.log lines, metrics.jsonl, TensorBoard, checkpoints."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_iteration: int):
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self.checkpoints = run_dir / "checkpoints"
        self.writer = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._attach_log_file(run_dir / "train.log")
            self._truncate_metrics_after(resumed_iteration)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_iteration + 1)

    def _attach_log_file(self, path: Path) -> None:
        """Log to ``train.log`` unless a handler (Hydra's job log) already writes there."""
        root = logging.getLogger()
        self.log_handler = None
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
            self.log_handler = logging.FileHandler(path)
            self.log_handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            root.addHandler(self.log_handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def _truncate_metrics_after(self, iteration: int) -> None:
        """On resume, drop evaluations logged after the checkpoint: they will be recomputed."""
        if not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines()
                 if line.strip() and json.loads(line)["iter"] <= iteration]
        self.metrics_path.write_text("".join(line + "\n" for line in lines))

    def scalars(self, values: Mapping[str, float], iteration: int) -> None:
        if self.writer:
            for key, value in values.items():
                if value is not None:
                    self.writer.add_scalar(key, value, iteration)

    def metrics(self, record: Mapping) -> None:
        if self.enabled:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def images(self, tag: str, image: np.ndarray, iteration: int) -> None:
        if self.writer:
            self.writer.add_image(tag, image, iteration, dataformats="HWC")

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.enabled and self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler.close()
