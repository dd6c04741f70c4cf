"""Scan a whole dataset split: every problem (not only the first), class pixel frequencies, suggested class weights
and image sizes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from seg.data.base import IGNORE_INDEX, DatasetError
from seg.data.channels import ChannelStatistics
from seg.data.class_weights import METHODS, PixelStatistics


@dataclass
class CheckReport:
    num_samples: int
    class_names: List[str]
    problems: List[str] = field(default_factory=list)
    # pixels per label value (0 to the ignore index) and, per value, the number of images that contain it
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(IGNORE_INDEX + 1, dtype=np.int64))
    image_counts: np.ndarray = field(default_factory=lambda: np.zeros(IGNORE_INDEX + 1, dtype=np.int64))
    image_sizes: Counter = field(default_factory=Counter)  # (height, width) -> number of images
    statistics: Optional[PixelStatistics] = None  # of the samples without problems: what class weights come from
    skipped: List[str] = field(default_factory=list)  # objects an annotation file holds that were not drawn
    ignore_index: int = IGNORE_INDEX  # 65535 for the 16-bit labels of more than 255 classes
    channels: ChannelStatistics = field(default_factory=ChannelStatistics)  # dataset.mean / dataset.std to use

    @property
    def ok(self) -> bool:
        return not self.problems

    def suggested_weights(self) -> dict:
        """``{method: [weight per class]}`` for ``train.class_weights``, from the samples read."""
        stats = self.statistics or PixelStatistics(len(self.class_names))
        return {method: stats.weights(method) for method in METHODS}

    def format(self, max_sizes: int = 10, command: str = "python scripts/train.py ...") -> str:
        """The report; ``command`` (the training command for this dataset) is printed with the statistics' keys."""
        lines = [f"{self.num_samples} samples, {len(self.problems)} with problems"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  skipped: {line}" for line in self.skipped]
        total = int(self.pixel_counts.sum())
        ignored = int(self.pixel_counts[self.ignore_index])
        labelled = total - ignored
        weights = self.suggested_weights()
        lines.append(f"class pixel frequencies and suggested train.class_weights ({labelled} labelled pixels, "
                     f"{ignored / max(total, 1):.2%} of all pixels ignored, value {self.ignore_index}):")
        name_width = max([len(n) for n in self.class_names] + [5])
        digits = max(3, len(str(len(self.class_names) - 1)))
        lines.append(f"  {'#':>{digits}} {'class':<{name_width}} {'pixels':>8} {'images':>7} "
                     + " ".join(f"{m:>16}" for m in METHODS))
        for index, name in enumerate(self.class_names):
            lines.append(f"  {index:{digits}d} {name:<{name_width}} {self.pixel_counts[index] / max(labelled, 1):8.3%} "
                         f"{self.image_counts[index]:7d} " + " ".join(f"{weights[m][index]:16.4f}" for m in METHODS))
        lines.append("  as lists: " + "; ".join(
            f"train.class_weights=[{','.join(f'{w:.4g}' for w in weights[m])}]" for m in METHODS))
        lines.append(f"image sizes (height x width), {len(self.image_sizes)} distinct:")
        for (height, width), count in self.image_sizes.most_common(max_sizes):
            lines.append(f"  {height} x {width}: {count} images")
        if len(self.image_sizes) > max_sizes:
            lines.append(f"  ... and {len(self.image_sizes) - max_sizes} more sizes")
        lines += self.channels.format(command)
        return "\n".join(lines)


def check_dataset(dataset, progress: bool = True) -> CheckReport:
    """Read every sample of ``dataset`` and collect the problems (``DatasetError``s) and statistics.

    The problems found while listing the files (``dataset.problems``: build it with ``strict=False``) come first.
    """
    report = CheckReport(num_samples=len(dataset), class_names=list(dataset.class_names),
                         problems=list(dataset.problems), statistics=PixelStatistics(dataset.num_classes),
                         skipped=dataset.skipped_lines() if hasattr(dataset, "skipped_lines") else [],
                         ignore_index=dataset.ignore_index)
    report.pixel_counts = np.zeros(dataset.ignore_index + 1, dtype=np.int64)
    report.image_counts = np.zeros(dataset.ignore_index + 1, dtype=np.int64)
    for index in tqdm(range(len(dataset)), desc="checking", unit="image", disable=not progress):
        try:
            image, mask = dataset[index]
        except DatasetError as error:
            report.problems.append(f"{dataset.sample_id(index)}: {error}")
            continue
        counts = np.bincount(mask.ravel(), minlength=dataset.ignore_index + 1)
        report.pixel_counts += counts
        report.image_counts += counts > 0
        report.statistics.add_counts(counts)
        report.image_sizes[image.shape[:2]] += 1
        report.channels.add(image)
    return report
