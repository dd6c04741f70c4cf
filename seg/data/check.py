"""Scan a whole dataset split: every problem (not only the first), class pixel frequencies and image sizes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import List

import numpy as np
from tqdm import tqdm

from seg.data.base import IGNORE_INDEX, DatasetError


@dataclass
class CheckReport:
    num_samples: int
    class_names: List[str]
    problems: List[str] = field(default_factory=list)
    # pixels per mask value (0-255) and, per class, the number of images that contain it
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    image_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    image_sizes: Counter = field(default_factory=Counter)  # (height, width) -> number of images

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_sizes: int = 10) -> str:
        lines = [f"{self.num_samples} samples, {len(self.problems)} with problems"]
        lines += [f"  problem: {p}" for p in self.problems]
        total = int(self.pixel_counts.sum())
        labelled = total - int(self.pixel_counts[IGNORE_INDEX])
        lines.append(f"class pixel frequencies ({labelled} labelled pixels, "
                     f"{self.pixel_counts[IGNORE_INDEX] / max(total, 1):.2%} of all pixels ignored):")
        name_width = max([len(n) for n in self.class_names] + [5])
        for index, name in enumerate(self.class_names):
            lines.append(f"  {index:3d} {name:<{name_width}} {self.pixel_counts[index] / max(labelled, 1):8.3%} "
                         f"of labelled pixels, in {self.image_counts[index]} images")
        lines.append(f"image sizes (height x width), {len(self.image_sizes)} distinct:")
        for (height, width), count in self.image_sizes.most_common(max_sizes):
            lines.append(f"  {height} x {width}: {count} images")
        if len(self.image_sizes) > max_sizes:
            lines.append(f"  ... and {len(self.image_sizes) - max_sizes} more sizes")
        return "\n".join(lines)


def check_dataset(dataset, progress: bool = True) -> CheckReport:
    """Read every sample of ``dataset`` and collect the problems (``DatasetError``s) and statistics."""
    report = CheckReport(num_samples=len(dataset), class_names=list(dataset.class_names))
    for index in tqdm(range(len(dataset)), desc="checking", unit="image", disable=not progress):
        try:
            image, mask = dataset[index]
        except DatasetError as error:
            report.problems.append(f"{dataset.sample_id(index)}: {error}")
            continue
        counts = np.bincount(mask.ravel(), minlength=256)
        report.pixel_counts += counts
        report.image_counts += counts > 0
        report.image_sizes[image.shape[:2]] += 1
    return report

