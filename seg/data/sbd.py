"""Build VOC's ``train_aug`` split (10,582 images) from the Semantic Boundaries Dataset (SBD).

``train_aug`` = (SBD train + SBD val + VOC train) minus VOC val. Masks go to ``VOC2012/SegmentationClassAug/`` as
palette PNGs: VOC's own mask where VOC has one (it keeps VOC's 255 object outlines), else SBD's ``cls/<id>.mat``
(struct ``GTcls.Segmentation``, class indices without outlines). SBD's images are all in VOC 2012's
``JPEGImages/``, so no image is copied.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image
from scipy.io import loadmat
from tqdm import tqdm

from seg.data.base import DatasetError, not_found, read_mask
from seg.data.voc import VOC_CLASSES, find_voc_folder, read_split_file, voc_palette
from seg.outputs import check_outputs


def find_sbd_folder(sbd_root: Union[str, Path]) -> Path:
    """The folder holding ``cls/``, ``train.txt`` and ``val.txt``: ``benchmark_RELEASE/dataset`` or given itself."""
    sbd_root = Path(sbd_root).expanduser()
    for candidate in (sbd_root, sbd_root / "dataset", sbd_root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise not_found("SBD folder with cls/, train.txt and val.txt", sbd_root / "benchmark_RELEASE" / "dataset")


def read_sbd_mask(path: Path) -> np.ndarray:
    try:
        mask = loadmat(str(path))["GTcls"][0]["Segmentation"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise DatasetError(f"cannot read SBD mask {path}: {error!r}") from None
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0 or mask.max() >= len(VOC_CLASSES):
        raise DatasetError(f"SBD mask {path} is not a 2-D map of VOC class indices (shape {mask.shape})")
    return mask.astype(np.uint8)


def prepare_sbd(sbd_root: Union[str, Path], voc_root: Union[str, Path], progress: bool = True,
                overwrite: bool = False) -> int:
    """Write ``SegmentationClassAug/`` and ``ImageSets/Segmentation/train_aug.txt``; returns the number of images.

    Existing masks or list (e.g. a downloaded ``SegmentationClassAug``) are replaced only with ``overwrite``.
    """
    sbd = find_sbd_folder(sbd_root)
    voc = find_voc_folder(voc_root)
    split_files = [sbd / "train.txt", sbd / "val.txt", voc / "ImageSets/Segmentation/train.txt",
                   voc / "ImageSets/Segmentation/val.txt"]
    for path in split_files:
        if not path.is_file():
            raise not_found("split file", path)
    sbd_train, sbd_val, voc_train, voc_val = (read_split_file(path) for path in split_files)
    ids = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))
    missing = [i for i in ids if not (voc / "JPEGImages" / f"{i}.jpg").is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} train_aug images are not in {voc / 'JPEGImages'} (e.g. {missing[:5]}); "
                           "is it the full VOC 2012 trainval release?")

    output = voc / "SegmentationClassAug"
    split_list = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    check_outputs([split_list, *(output / f"{i}.png" for i in ids)],
                  {"--sbd": sbd, "--voc": voc / "SegmentationClass"}, None, overwrite,
                  key="--voc", option="--overwrite")
    output.mkdir(exist_ok=True)
    palette = voc_palette().tobytes()
    voc_masks = set(voc_train)
    for sample_id in tqdm(ids, desc="SegmentationClassAug", unit="mask", disable=not progress):
        target = output / f"{sample_id}.png"
        if sample_id in voc_masks:
            source = voc / "SegmentationClass" / f"{sample_id}.png"
            read_mask(source)  # fail here, naming the file, rather than copy a broken mask
            shutil.copyfile(source, target)
            continue
        image = Image.fromarray(read_sbd_mask(sbd / "cls" / f"{sample_id}.mat"))
        image.putpalette(palette)
        image.save(target)
    split_list.write_text("\n".join(ids) + "\n")
    return len(ids)
