"""Cityscapes benchmark submission (predict.py ``format=cityscapes``): labelIds PNGs and the zip the server takes.

The server scores a test image ``<city>_<seq>_<frame>_leftImg8bit.png`` with the one PNG in the archive, at any
depth, whose name matches ``<city>_<seq>_<frame>*.png`` (cityscapesScripts'
``evalPixelLevelSemanticLabeling.getPrediction``, which the benchmark runs; two matches are an error). Its
pixels must be label ids (``road`` = 7, ``car`` = 26, ...), not the 19 train ids a model predicts. Each image is
therefore written as ``<city>/<city>_<seq>_<frame>_labelIds.png`` (8-bit grey, the image's size), its sub-folder
under ``input`` kept, and the files of the run are packed into one zip.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from seg.data.cityscapes import CITYSCAPES_CLASSES, train_ids_to_label_ids
from seg.errors import UserError
from seg.io import replacing

NUM_CLASSES = len(CITYSCAPES_CLASSES)
IMAGE_NAME = re.compile(r"^(?P<core>[^_]+_\d{6}_\d{6})_leftImg8bit$")
ZIP_NAME = "cityscapes_submission.zip"
FOLDER = "cityscapes"  # under predict's output (seg.engine.voc_submission has the same names)
ARCHIVE_NAME = ZIP_NAME
WHAT = "labelIds PNGs"


class SubmissionError(UserError, ValueError):
    pass


def submission_paths(relatives: Sequence[Path]) -> list:
    """The labelIds file (relative to the submission folder) of each image (relative path, suffix removed).

    Names that are not Cityscapes image names, or two images of the same frame, are refused before any work.
    """
    paths, seen = [], {}
    for relative in relatives:
        match = IMAGE_NAME.match(relative.name)
        if match is None:
            raise SubmissionError(f"format=cityscapes needs Cityscapes image names <city>_<seq>_<frame>_leftImg8bit"
                                  f".png (as in leftImg8bit/test/<city>/), got {relative}")
        core = match["core"]
        if core in seen:
            raise SubmissionError(f"format=cityscapes: {seen[core]} and {relative} are the same frame ({core}); the "
                                  "server refuses two predictions for one image")
        seen[core] = relative
        paths.append(relative.parent / f"{core}_labelIds.png")
    return paths


def check_classes(num_classes: int) -> None:
    if num_classes != NUM_CLASSES:
        raise SubmissionError(f"format=cityscapes needs a model of the {NUM_CLASSES} Cityscapes classes (train ids), "
                              f"this one predicts {num_classes}")


def save_label_ids(train_ids: np.ndarray, path: Path) -> None:
    """A prediction in train ids ``[H, W]`` written as label ids (8-bit grey PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(train_ids_to_label_ids(train_ids)).save(path)  # uint8 [H, W]: mode "L"


save = save_label_ids  # the name predict calls each submission format's writer by


def pack(folder: Path, relatives: Sequence[Path], target: Path) -> Path:
    """Zip ``folder / relative`` for each relative path, stored under the relative path; written atomically."""
    with replacing(target) as temporary, zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
        for relative in relatives:  # stored: PNGs are compressed already
            archive.write(folder / relative, relative.as_posix())
    return target
