"""What evaluate.py writes: ``metrics.json``, the confusion matrix (CSV and PNG heat map) and a per-class table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Heat map colours: no pixels -> white, all of a row's pixels -> dark blue; grey rows have no labelled pixels.
EMPTY, FULL, NO_LABELS = np.array([255, 255, 255]), np.array([8, 48, 107]), np.array([200, 200, 200])


def write_evaluation(run_dir: Path, metrics: Mapping, matrix: torch.Tensor, class_names: Sequence[str]) -> Dict:
    """Write ``metrics.json``, ``confusion_matrix.csv`` and ``confusion_matrix.png``; return their paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": run_dir / "metrics.json", "csv": run_dir / "confusion_matrix.csv",
             "png": run_dir / "confusion_matrix.png"}
    paths["metrics"].write_text(json.dumps(dict(metrics), indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label \\ prediction", *class_names])
        for name, row in zip(class_names, matrix.tolist()):
            writer.writerow([name, *row])
    confusion_heatmap(matrix, class_names).save(paths["png"])
    return paths


def metrics_table(metrics: Mapping, matrix: torch.Tensor) -> str:
    """Per-class IoU (percent) with each class's labelled pixel count, then the summary line."""
    names = list(metrics["per_class_iou"])
    width = max(12, *(len(n) for n in names))
    label_pixels = matrix.sum(1).tolist()
    lines = [f"{'class':<{width}}  {'IoU %':>7}  {'label pixels':>12}"]
    for name, pixels in zip(names, label_pixels):
        iou = metrics["per_class_iou"][name]
        lines.append(f"{name:<{width}}  {'-' if iou is None else f'{100 * iou:.2f}':>7}  {pixels:>12}")
    lines.append(f"mIoU {100 * metrics['mIoU']:.2f}  pixel acc {100 * metrics['pixel_acc']:.2f}  mean acc "
                 f"{100 * metrics['mean_acc']:.2f}  fwIoU {100 * metrics['fwIoU']:.2f}  "
                 f"({metrics['num_images']} images)")
    return "\n".join(lines)


def confusion_heatmap(matrix: torch.Tensor, class_names: Sequence[str]) -> Image.Image:
    """Row-normalised confusion matrix as an RGB image: row i shows where the pixels labelled i were predicted.

    Class names are drawn along both axes when the cells are large enough to read them (up to ~60 classes).
    """
    counts = matrix.double().cpu().numpy()
    rows = counts.sum(1, keepdims=True)
    fractions = counts / np.maximum(rows, 1)
    rgb = EMPTY + fractions[..., None] * (FULL - EMPTY)
    rgb[rows[:, 0] == 0] = NO_LABELS
    n = len(class_names)
    cell = max(4, min(32, 640 // max(n, 1)))
    grid = Image.fromarray(rgb.round().astype(np.uint8)).resize((n * cell, n * cell), Image.NEAREST)
    if cell < 10:
        return grid
    font = ImageFont.load_default()
    margin = int(max(font.getlength(name) for name in class_names)) + 8
    canvas = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    canvas.paste(grid, (margin, margin))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((margin - 1, margin - 1, margin + n * cell, margin + n * cell), outline="grey")
    columns = Image.new("RGB", (margin, n * cell), "white")  # drawn horizontally, then turned to read upwards
    column_draw = ImageDraw.Draw(columns)
    for i, name in enumerate(class_names):
        middle = i * cell + cell // 2
        draw.text((margin - 4, margin + middle), name, fill="black", font=font, anchor="rm")
        column_draw.text((4, middle), name, fill="black", font=font, anchor="lm")
    canvas.paste(columns.rotate(90, expand=True), (margin, 0))
    return canvas
