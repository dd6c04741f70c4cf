"""Cityscapes: the official label table, labelIds -> train ids for every id, labelTrainIds preferred."""

import re

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import Cityscapes

from seg.data import CITYSCAPES_CLASSES, DatasetError, build_dataset
from seg.data.cityscapes import LABELS, train_ids_to_label_ids

# id -> trainId from cityscapesScripts' labels.py, written out independently of seg.data.cityscapes.
OFFICIAL_TRAIN_IDS = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4,
    14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18, -1: -1,
}
OFFICIAL_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                  "bicycle"]


def test_label_table_is_the_official_one():
    assert {label.id: label.train_id for label in LABELS} == OFFICIAL_TRAIN_IDS
    assert len(LABELS) == 35 and LABELS[-1].name == "license plate"
    assert list(CITYSCAPES_CLASSES) == OFFICIAL_NAMES
    # torchvision carries the same table (from cityscapesScripts): names, ids, train ids and colours agree.
    assert [(label.name, label.id, label.train_id, label.color) for label in LABELS] == \
           [(c.name, c.id, c.train_id, c.color) for c in Cityscapes.classes]


def test_train_ids_map_back_to_the_official_label_ids():
    """The test server scores label ids: the 19 train ids must map back exactly as cityscapesScripts' table says."""
    from cityscapesscripts.helpers.labels import labels, trainId2label

    official = {label.trainId: label.id for label in labels if 0 <= label.trainId < 255}
    assert sorted(official) == list(range(19))
    train_ids = np.arange(19, dtype=np.uint8).reshape(1, 19)
    assert train_ids_to_label_ids(train_ids).tolist() == [[official[t] for t in range(19)]]
    assert all(trainId2label[t].name == CITYSCAPES_CLASSES[t] for t in range(19))
    # never predicted, but a void train id must become a label id the server ignores, not a class
    void = int(train_ids_to_label_ids(np.array([[255]], dtype=np.uint8))[0, 0])
    assert {label.id: label.ignoreInEval for label in labels}[void]


def write_city(root, split, city, frame, label_ids, train_ids=None):
    stem = f"{city}_000000_{frame:06d}"
    images, labels = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((*label_ids.shape, 3), np.uint8)).save(images / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids).save(labels / f"{stem}_gtFine_labelIds.png")
    if train_ids is not None:
        Image.fromarray(train_ids).save(labels / f"{stem}_gtFine_labelTrainIds.png")
    return stem


def every_id():
    """A 6x8 labelIds map holding ids 0-33, each once or more, and 255 (id -1 as a uint8 holds it)."""
    ids = np.array(list(range(34)) + [255] * 14, dtype=np.uint8)
    return ids.reshape(6, 8)


def test_every_label_id_maps_to_its_train_id(tmp_path):
    ids = every_id()
    write_city(tmp_path, "train", "aachen", 19, ids)
    dataset = build_dataset("cityscapes", tmp_path, "train")
    assert dataset.class_names == OFFICIAL_NAMES and dataset.num_classes == 19
    image, mask = dataset[0]
    assert image.shape == (6, 8, 3) and dataset.sample_id(0) == "aachen_000000_000019"
    expected = np.vectorize(lambda i: OFFICIAL_TRAIN_IDS[-1 if i == 255 else int(i)] % 256)(ids).astype(np.uint8)
    np.testing.assert_array_equal(mask, expected)
    assert tuple(dataset.palette[0]) == (128, 64, 128) and tuple(dataset.palette[18]) == (119, 11, 32)


def test_label_train_ids_preferred(tmp_path):
    ids = every_id()
    train_ids = np.full(ids.shape, 255, np.uint8)
    train_ids[:, :4] = 13
    write_city(tmp_path, "val", "frankfurt", 1, ids, train_ids)
    write_city(tmp_path, "val", "lindau", 2, ids)
    dataset = build_dataset("cityscapes", tmp_path, "val")
    assert [dataset.sample_id(i) for i in range(2)] == ["frankfurt_000000_000001", "lindau_000000_000002"]
    np.testing.assert_array_equal(dataset[0][1], train_ids)
    assert dataset[1][1][0, 7] == 0  # id 7 (road) -> 0, read from labelIds


def test_unknown_label_id(tmp_path):
    ids = every_id()
    ids[0, 0], ids[1, 1] = 40, 34
    stem = write_city(tmp_path, "train", "ulm", 3, ids)
    with pytest.raises(DatasetError, match=re.escape(f"{stem}_gtFine_labelIds.png holds values [34, 40]")):
        build_dataset("cityscapes", tmp_path, "train")[0]


def test_bad_train_ids_and_missing_mask(tmp_path):
    ids = every_id()
    stem = write_city(tmp_path, "train", "ulm", 3, ids, train_ids=np.full(ids.shape, 19, np.uint8))
    with pytest.raises(DatasetError, match=re.escape(f"{stem}_gtFine_labelTrainIds.png holds values [19]")):
        build_dataset("cityscapes", tmp_path, "train")[0]
    for path in (tmp_path / "gtFine/train/ulm").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=f"mask file not found: .*{stem}_gtFine_labelIds.png"):
        build_dataset("cityscapes", tmp_path, "train")[0]


def test_missing_folders_and_fixed_class_count(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "leftImg8bit" / "train")) + ".*docs/datasets"):
        build_dataset("cityscapes", tmp_path, "train")
    (tmp_path / "leftImg8bit/train").mkdir(parents=True)
    (tmp_path / "gtFine/train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="is empty"):
        build_dataset("cityscapes", tmp_path, "train")
    write_city(tmp_path, "train", "ulm", 3, every_id())
    with pytest.raises(DatasetError, match="has 19 classes"):
        build_dataset("cityscapes", tmp_path, "train", num_classes=20)
    renamed = [f"c{i}" for i in range(19)]
    assert build_dataset("cityscapes", tmp_path, "train", class_names=renamed).class_names == renamed
