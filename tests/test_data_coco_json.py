"""dataset=coco_json: CVAT, Label Studio and Roboflow COCO exports, masks against pycocotools' own annToMask, the
overlap rule, crowd, category subsets, derived splits, bad input, check_dataset, and a tiny training run."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
from helpers import compose_config, folder_overrides, run_script
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from seg.data import DatasetError, build_dataset, check_dataset
from seg.engine.checkpoint import load_checkpoint
from seg.engine.trainer import train

W, H = 64, 48


def uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths of the column-major flattening, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"counts": np.diff(np.concatenate([[0], changes])).tolist(), "size": [H, W]}


def disc(cx, cy, r):
    yy, xx = np.mgrid[:H, :W]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def objects(image_id, ids):
    """Objects of image ``image_id`` using category ids ``ids`` (3 of them): a big polygon, a smaller polygon on top
    of it (two parts), a compressed-RLE crowd and an uncompressed-RLE object."""
    a, b, c = ids
    compressed = coco_mask.encode(np.asfortranarray(disc(50, 12, 9 + image_id)))
    shift = 3 * image_id
    return [
        {"segmentation": [[2, 2, 40, 2, 40, 40, 2, 40]], "category_id": a, "iscrowd": 0},  # the big square
        {"segmentation": [[10 + shift, 10, 30, 12, 20, 30], [45, 38, 60, 38, 60, 46, 45, 46]],
         "category_id": b, "iscrowd": 0},                                                   # on the square
        {"segmentation": {"counts": compressed["counts"].decode(), "size": [H, W]}, "category_id": c,
         "iscrowd": 1},                                                                     # a crowd disc
        {"segmentation": uncompressed_rle(disc(12, 40, 6)), "category_id": c, "iscrowd": 0},
    ]


def write_export(folder, file_names, ids, names, image_dir, json_path, file_prefix="", extra_categories=()):
    """Images (``image_dir``) and one COCO instances file (``json_path``); the last image has no objects."""
    image_dir.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    rng = np.random.default_rng(len(file_names))
    for number, name in enumerate(file_names, start=1):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(image_dir / name)
        images.append({"id": number, "file_name": file_prefix + name, "width": W, "height": H})
        if number < len(file_names):
            for ann in objects(number, ids):
                annotations.append(dict(ann, id=len(annotations) + 1, image_id=number, area=1.0, bbox=[0, 0, 1, 1]))
    categories = [*extra_categories, *({"id": i, "name": n, "supercategory": ""} for i, n in zip(ids, names))]
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_path


def cvat(root):
    """CVAT "COCO 1.0" with subsets train and val: ids 1, 2, 5."""
    for subset, count in (("train", 3), ("val", 2)):
        write_export(root, [f"{subset}_{i}.jpg" for i in range(count)], (1, 2, 5), ("road", "car", "tree"),
                     root / "images" / subset, root / "annotations" / f"instances_{subset}.json")
    return root


def label_studio(root):
    """Label Studio's COCO export: result.json, file names "images/...", category ids from 0."""
    write_export(root, [f"photo_{i}.png" for i in range(4)], (0, 1, 2), ("Building", "Person", "Tree"),
                 root / "images", root / "result.json", file_prefix="images/")
    return root


def roboflow(root):
    """Roboflow "COCO Segmentation": <split>/_annotations.coco.json, a dataset-name category 0 that is the others'
    supercategory."""
    parent = [{"id": 0, "name": "plants", "supercategory": "none"}]
    for split, count in (("train", 3), ("valid", 2)):
        write_export(root, [f"{split}{i}_jpg.rf.abc{i}.jpg" for i in range(count)], (1, 2, 3),
                     ("leaf", "stem", "weed"), root / split, root / split / "_annotations.coco.json",
                     extra_categories=parent)
        data = json.loads((root / split / "_annotations.coco.json").read_text())
        for category in data["categories"][1:]:
            category["supercategory"] = "plants"
        (root / split / "_annotations.coco.json").write_text(json.dumps(data))
    return root


def reference(json_path, file_name, class_of, crowd_value=None):
    """pycocotools' own annToMask per object, painted larger first (smaller on top), ties in the file's order."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(json_path))
    image = next(i for i in coco.imgs.values() if i["file_name"] == file_name)
    target = np.zeros((image["height"], image["width"]), np.uint8)
    masks = [(coco.annToMask(a), a) for a in coco.imgToAnns[image["id"]]]
    for mask, ann in sorted(masks, key=lambda m: -int(m[0].sum())):  # sorted() is stable
        value = crowd_value if ann["iscrowd"] and crowd_value is not None else class_of[ann["category_id"]]
        target[mask.astype(bool)] = value
    return target


@pytest.mark.parametrize("layout", ["cvat", "label_studio", "roboflow"])
def test_each_tool_layout_matches_pycocotools(tmp_path, layout):
    root = {"cvat": cvat, "label_studio": label_studio, "roboflow": roboflow}[layout](tmp_path / layout)
    ids, names, json_path, prefix = {
        "cvat": ((1, 2, 5), ["road", "car", "tree"], root / "annotations" / "instances_train.json", ""),
        "label_studio": ((0, 1, 2), ["Building", "Person", "Tree"], root / "result.json", "images/"),
        "roboflow": ((1, 2, 3), ["leaf", "stem", "weed"], root / "train" / "_annotations.coco.json", "")}[layout]
    split = "all" if layout == "label_studio" else "train"
    dataset = build_dataset("coco_json", root, split)
    assert dataset.class_names == ["background", *names] and dataset.problems == []  # roboflow's "plants" is no class
    class_of = {category: index for index, category in enumerate(ids, start=1)}
    assert len(dataset) == (4 if layout == "label_studio" else 3)
    for index in range(len(dataset)):
        image, mask = dataset[index]
        file_name = prefix + dataset.samples[index].image.name
        np.testing.assert_array_equal(mask, reference(json_path, file_name, class_of))
        assert image.shape == (H, W, 3)
    masks = [dataset[i][1] for i in range(len(dataset))]
    assert sum(not m.any() for m in masks) == 1  # the image without objects is all background
    first = masks[0]
    assert first[20, 20] in (1, 2) and first[5, 5] == 1 and first[15, 20] == 2  # the smaller object is on top


def test_roboflow_val_is_valid_and_crowd_ignore_and_categories(tmp_path):
    root = roboflow(tmp_path)
    val = build_dataset("coco_json", root, "val")
    assert len(val) == 2 and all(s.image.parent.name == "valid" for s in val.samples)
    json_path = root / "valid" / "_annotations.coco.json"
    ignored = build_dataset("coco_json", root, "val", crowd="ignore")
    for index in range(2):
        expected = reference(json_path, ignored.samples[index].image.name, {1: 1, 2: 2, 3: 3}, crowd_value=255)
        np.testing.assert_array_equal(ignored[index][1], expected)
    assert (ignored[0][1] == 255).any()
    subset = build_dataset("coco_json", root, "all", categories=["weed", 1])  # names or ids
    assert subset.class_names == ["background", "leaf", "weed"] and len(subset) == 5
    mask = subset[0][1]
    assert set(np.unique(mask)) <= {0, 1, 2} and (mask == 2).any()
    assert "categories left out by dataset.categories" in "".join(subset.skipped_lines())
    with pytest.raises(DatasetError, match=r"dataset\.categories names 'grass', which is not a category .* \(they "
                                           r"have leaf, stem, weed\)"):
        build_dataset("coco_json", root, "train", categories=["grass"])
    with pytest.raises(DatasetError, match=r"dataset\.split=test has no annotation file: .*choose one of train, "
                                           r"valid, all"):
        build_dataset("coco_json", root, "test")


def test_one_file_derives_train_and_val(tmp_path):
    root = label_studio(tmp_path)
    train_set = build_dataset("coco_json", root, "train", val_fraction=0.25)
    val_set = build_dataset("coco_json", root, "val", val_fraction=0.25)
    assert len(train_set) == 3 and len(val_set) == 1 and train_set.derived_splits == val_set.derived_splits
    assert sorted(train_set.derived_splits["train"] + train_set.derived_splits["val"]) == [
        f"images/photo_{i}" for i in range(4)]
    recorded = build_dataset("coco_json", root, "val", splits={"train": [], "val": ["images/photo_2"]})
    assert [recorded.sample_id(0)] == ["images/photo_2"]
    # the same file named with dataset.annotations, the images elsewhere
    (root / "images").rename(tmp_path / "pictures")
    elsewhere = build_dataset("coco_json", None, "all", annotations=str(root / "result.json"),
                              images=str(tmp_path / "pictures"))
    assert len(elsewhere) == 4 and elsewhere.class_names == ["background", "Building", "Person", "Tree"]
    by_map = build_dataset("coco_json", root, "val", annotations={"train": "result.json", "val": "result.json"},
                           images=str(tmp_path / "pictures"))
    assert len(by_map) == 4 and by_map.derived_splits is None


# --- bad input: one line naming the file and the object ------------------------------------------------------------

def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_bad_objects_are_problems_naming_file_and_object(tmp_path):
    root = cvat(tmp_path)
    path = root / "annotations" / "instances_train.json"

    def damage(data):
        data["annotations"][0]["segmentation"] = [[2, 2, 90, 2, 40, 40]]  # x = 90 outside the 64 px image
        data["annotations"][1]["category_id"] = 7                           # no such category
        data["annotations"][4]["segmentation"] = []                        # a box only: skipped, counted
        data["annotations"][5]["segmentation"] = [[1, 1, 5, 5]]            # a 2-point polygon: skipped, counted
        data["images"][2]["file_name"] = "gone.jpg"                        # missing image
    _edit(path, damage)
    with pytest.raises(DatasetError) as info:
        build_dataset("coco_json", root, "train")
    message = str(info.value)
    assert "\n" not in message and re.match(
        r"annotation 1 of image 'train_0\.jpg' in .*instances_train\.json has a polygon point \(90, 2\) outside the "
        r"64x48 image \(and 2 more problems\); python scripts/check_dataset\.py dataset=coco_json", message)
    dataset = build_dataset("coco_json", root, "train", strict=False)
    assert any(re.search(r"annotation 2 of image 'train_0\.jpg' in .*instances_train\.json has category id 7, "
                         r"which 'categories' does not list", p) for p in dataset.problems)
    assert any(re.search(r"image 'gone\.jpg' \(id 3\) named by .*instances_train\.json not found", p)
               for p in dataset.problems)
    assert len(dataset) == 1  # train_0 (bad objects) and gone.jpg are left out; train_1 stays
    report = check_dataset(dataset, progress=False)
    text = report.format()
    assert not report.ok and "skipped: 1 objects without a segmentation (a box only) (e.g. annotation 5 " in text
    assert "skipped: 1 polygons of fewer than 3 points (e.g. annotation 6 " in text


@pytest.mark.parametrize("content, message", [
    ("", r"COCO annotations file .*instances_train\.json is empty"),
    ("{\"images\": [", r"COCO annotations file .*instances_train\.json is not JSON \(Expecting value, line 1"),
    (json.dumps({"version": "5.0", "shapes": [], "imagePath": "a.jpg"}),
     r"is not a COCO instances file: it has no 'images', 'annotations', 'categories' lists; it is a LabelMe file: "
     r"use dataset=labelme"),
    (json.dumps([{"id": 1, "annotations": []}]), r"Label Studio JSON export: export as COCO instead"),
])
def test_files_that_are_not_coco(tmp_path, content, message):
    root = cvat(tmp_path)
    (root / "annotations" / "instances_train.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        build_dataset("coco_json", root, "train")


def test_nothing_to_read(tmp_path):
    with pytest.raises(DatasetError, match=r"no COCO annotations found in .*: expected annotations/instances_"):
        build_dataset("coco_json", tmp_path, "train")
    with pytest.raises(DatasetError, match=r"dataset\.crowd must be one of category, ignore"):
        build_dataset("coco_json", tmp_path, "train", crowd="skip")


def test_check_script_trains_and_evaluates(tmp_path):
    root = cvat(tmp_path / "data")
    result = run_script("check_dataset.py", ["dataset=coco_json", f"dataset.root={root}", "dataset.split=all",
                                             f"hydra.run.dir={tmp_path / 'check'}"])
    assert "5 samples, 0 with problems" in result.stdout and "tree" in result.stdout
    run = tmp_path / "run"
    summary = train(compose_config("train", folder_overrides(root, {}, dataset="coco_json")), run)
    assert summary["iteration"] == 2 and list(summary["last_metrics"]["per_class_dice"]) == [
        "background", "road", "car", "tree"]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["class_names"] == ["background", "road", "car", "tree"]
    run_script("evaluate.py", [f"ckpt={run / 'checkpoints' / 'last.pt'}", "num_workers=0",
                               f"hydra.run.dir={tmp_path / 'eval'}"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 2
