"""COCO instances -> 21-class VOC masks: polygons, RLE (crowd and compressed), overlaps -> 255, filtering."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from seg.data import VOC_CLASSES, DatasetError, build_dataset
from seg.data.coco import COCO_NAMES

W, H = 40, 32
CAT_LIST = [0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72]


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths of the column-major flattening, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"counts": np.diff(np.concatenate([[0], changes])).tolist(), "size": [H, W]}


def box(y0, y1, x0, x1):
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


DOG = box(0, 16, 0, 20)
CHAIR = box(10, 30, 14, 30)


def annotation(ann_id, image_id, category, segmentation, area, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
            "area": area, "iscrowd": crowd, "bbox": [0, 0, 1, 1]}


@pytest.fixture
def coco(tmp_path):
    images = []
    for image_id in (1, 2, 3, 4):
        name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": W, "height": H})
        for split in ("train", "val"):
            (tmp_path / f"{split}2017").mkdir(exist_ok=True)
            Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / f"{split}2017" / name)
    compressed = coco_mask.encode(np.asfortranarray(CHAIR))
    annotations = [
        annotation(1, 1, 1, [[2, 2, 20, 2, 20, 20, 2, 20]], 324),                                 # person
        annotation(2, 1, 3, [[15, 10, 35, 10, 35, 28, 15, 28], [1, 24, 8, 24, 8, 30, 1, 30]], 700),  # car, 2 parts
        annotation(3, 1, 90, [[0, 0, 40, 0, 40, 32, 0, 32]], 1280),                               # toothbrush
        annotation(4, 2, 18, uncompressed_rle(DOG), 600, crowd=1),                               # dog (crowd)
        annotation(5, 2, 62, {"counts": compressed["counts"].decode(), "size": [H, W]}, 500),  # chair
        annotation(6, 3, 1, [[1, 1, 6, 1, 6, 6]], 50),                                            # tiny person
        annotation(7, 4, 90, [[0, 0, 40, 0, 40, 32, 0, 32]], 1280),                               # toothbrush only
    ]
    categories = [{"id": c, "name": COCO_NAMES.get(c, "toothbrush")} for c in sorted(set(CAT_LIST[1:]) | {90})]
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return tmp_path, annotations


def torchvision_reference(annotations, height, width):
    """torchvision's FilterAndRemapCocoCategories + ConvertCocoPolysToMask (references/segmentation/coco_utils.py)."""
    anno = [dict(a, category_id=CAT_LIST.index(a["category_id"])) for a in annotations if a["category_id"] in CAT_LIST]
    masks = []
    for polygons in (a["segmentation"] for a in anno):
        mask = coco_mask.decode(coco_mask.frPyObjects(polygons, height, width))
        if len(mask.shape) < 3:
            mask = mask[..., None]
        masks.append(torch.as_tensor(mask, dtype=torch.uint8).any(dim=2))
    masks = torch.stack(masks, dim=0).to(torch.uint8)
    cats = torch.as_tensor([a["category_id"] for a in anno], dtype=masks.dtype)
    target, _ = (masks * cats[:, None, None]).max(dim=0)
    target[masks.sum(0) > 1] = 255
    return target.numpy()


def test_train_split_matches_torchvision(coco):
    root, annotations = coco
    dataset = build_dataset("coco", root, "train")
    assert dataset.class_names == list(VOC_CLASSES) and dataset.num_classes == 21
    # image 3 (VOC-class area 50 <= 1000) and image 4 (no VOC-class annotation) are dropped for training
    assert [dataset.sample_id(i) for i in range(len(dataset))] == ["000000000001", "000000000002"]

    image, mask = dataset[0]
    assert image.shape == (H, W, 3) and mask.shape == (H, W) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, torchvision_reference([a for a in annotations if a["image_id"] == 1], H, W))
    assert mask[5, 5] == 15 and mask[25, 30] == 7 and mask[27, 4] == 7  # person, car and the car's second part
    assert mask[15, 17] == 255  # person and car overlap
    assert mask[31, 39] == 0 and set(np.unique(mask)) == {0, 7, 15, 255}  # the toothbrush is not a VOC class

    _, mask = dataset[1]  # crowd dog (uncompressed RLE, not in torchvision's polygon-only reference) and chair
    dog, chair = DOG.astype(bool), CHAIR.astype(bool)
    np.testing.assert_array_equal(mask[dog & ~chair], 12)
    np.testing.assert_array_equal(mask[chair & ~dog], 9)
    np.testing.assert_array_equal(mask[dog & chair], 255)
    np.testing.assert_array_equal(mask[~dog & ~chair], 0)


def test_val_split_keeps_every_image(coco):
    dataset = build_dataset("coco", coco[0], "val")
    assert len(dataset) == 4
    assert (dataset[2][1] == 15).any() and not dataset[3][1].any()
    assert len(build_dataset("coco", coco[0], "train", min_area=None)) == 4


def test_min_area_threshold(coco):
    ids = lambda ds: [ds.sample_id(i) for i in range(len(ds))]  # noqa: E731
    assert ids(build_dataset("coco", coco[0], "train", min_area=1023)) == ["000000000001", "000000000002"]
    assert ids(build_dataset("coco", coco[0], "train", min_area=1024)) == ["000000000002"]
    with pytest.raises(DatasetError, match=r"is empty: every one of its 4 images has VOC-class annotations covering "
                                           r"dataset\.min_area=5000 pixels or fewer"):
        build_dataset("coco", coco[0], "train", min_area=5000)


def test_an_export_with_its_own_categories_is_refused(coco):
    """CVAT's ids 1, 2, 5 are not person, bicycle, airplane: reading them so would be silently wrong."""
    path = coco[0] / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 1, "name": "road"}, {"id": 2, "name": "car"}, {"id": 5, "name": "tree"}]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances_val2017\.json is not COCO 2017 \(category id 1 is 'road', "
                                           r"COCO 2017's is 'person'\): .* use dataset=coco_json"):
        build_dataset("coco", coco[0], "val")
    data["categories"] = [{"id": 0, "name": "Airplane"}, {"id": 90, "name": "toothbrush"}]  # Label Studio's ids
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"it has none of the 20 COCO categories that are VOC classes"):
        build_dataset("coco", coco[0], "val")


def test_bad_files(coco):
    root, _ = coco
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(root / "annotations" / "instances_val2017.json"))):
        build_dataset("coco", root, "val")
    Image.fromarray(np.zeros((H, W - 10, 3), np.uint8)).save(root / "train2017" / "000000000002.jpg")
    with pytest.raises(DatasetError, match=r"000000000002\.jpg is 30x32 \(WxH\) but the mask from the annotations of "
                                           r"000000000002\.jpg in .*instances_train2017\.json is 40x32"):
        build_dataset("coco", root, "train")[1]
    (root / "train2017" / "000000000001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image file not found: .*000000000001\.jpg"):
        build_dataset("coco", root, "train")[0]


def test_malformed_segmentation(coco):
    root, _ = coco
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = {"counts": [3, "x"], "size": [H, W]}
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"cannot decode the annotations of 000000000001\.jpg"):
        build_dataset("coco", root, "val")[0]
