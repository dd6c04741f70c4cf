"""Pascal VOC 2012 test-server submission (predict.py ``format=voc``): palette PNGs and the tar.gz the server takes.

The VOC evaluation server scores the segmentation of each test image ``JPEGImages/<id>.jpg`` from
``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``: an indexed PNG of the image's size whose values are the
21 class indices (0 background ... 20 tv/monitor) and whose palette is VOC's colour map (the devkit's
``VOClabelcolormap``), uploaded as a tar.gz of the ``results/`` folder (``tar zcf results.tgz results``). ``comp6`` is
the competition for methods trained with data beyond VOC's own (ImageNet weights, SBD's train_aug); ``comp5`` is
for VOC data only. Each image is written there under its id, whatever sub-folder of ``input`` it was in.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from seg.data.voc import VOC_CLASSES, voc_palette
from seg.engine.submission import SubmissionError
from seg.io import replacing
from seg.visualize import save_label_png

NUM_CLASSES = len(VOC_CLASSES)
COMPETITION = "comp6"  # trained with data beyond VOC's (ImageNet weights, SBD); comp5: VOC's data only
FOLDER = f"results/VOC2012/Segmentation/{COMPETITION}_test_cls"  # under predict's output, and in the archive
ARCHIVE_NAME = "voc_submission.tar.gz"
WHAT = "VOC palette PNGs"
IMAGE_ID = re.compile(r"^\d{4}_\d{6}$")  # VOC's image ids: 2008_000001


def submission_paths(relatives: Sequence[Path]) -> list:
    """The result file (relative to ``FOLDER``) of each image (relative path, suffix removed): ``<id>.png``.

    Names that are not VOC image ids, or one id twice (in two sub-folders), are refused before any work.
    """
    paths, seen = [], {}
    for relative in relatives:
        if IMAGE_ID.match(relative.name) is None:
            raise SubmissionError(f"format=voc needs VOC image ids <year>_<number> as file names (as in the VOC2012 "
                                  f"test set's JPEGImages/, e.g. 2008_000001.jpg), got {relative}")
        if relative.name in seen:
            raise SubmissionError(f"format=voc: {seen[relative.name]} and {relative} are the same image id; the "
                                  "server takes one prediction per image")
        seen[relative.name] = relative
        paths.append(Path(f"{relative.name}.png"))
    return paths


def check_classes(num_classes: int) -> None:
    if num_classes != NUM_CLASSES:
        raise SubmissionError(f"format=voc needs a model of the {NUM_CLASSES} VOC classes, this one predicts "
                              f"{num_classes}")


def save(labels: np.ndarray, path: Path) -> None:
    """A prediction ``[H, W]`` of class indices as an indexed PNG with VOC's colour map."""
    save_label_png(labels.astype(np.uint8), voc_palette(), path)


def pack(folder: Path, relatives: Sequence[Path], target: Path) -> Path:
    """``target``, a tar.gz holding ``results/`` as the server takes it: the folders of ``FOLDER`` and the files
    ``folder / relative`` under it; written atomically."""
    with replacing(target) as temporary, tarfile.open(temporary, "w:gz") as archive:
        parts = PurePosixPath(FOLDER).parts
        for depth in range(1, len(parts) + 1):
            entry = tarfile.TarInfo("/".join(parts[:depth]))
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(entry)
        for relative in relatives:
            archive.add(folder / relative, f"{FOLDER}/{relative.as_posix()}", recursive=False)
    return target
