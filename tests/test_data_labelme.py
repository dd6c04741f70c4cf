"""dataset=labelme: every shape type rasterised as LabelMe does (compared with LabelMe's own shape_to_mask /
shapes_to_label when labelme is installed, and always with independent geometry), embedded images, the class list
found and recorded, bad input, check_dataset, and a tiny training run with evaluation."""

import base64
import importlib.util
import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import compose_config, folder_overrides, run_script
from PIL import Image
from pycocotools import mask as coco_mask

from seg.data import DatasetError, build_dataset, check_dataset
from seg.data.labelme import shape_to_mask
from seg.engine.checkpoint import load_checkpoint
from seg.engine.trainer import train

W, H = 64, 48
PATCH = np.zeros((6, 9), bool)
PATCH[1:5, 2:8] = True


def b64_png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def shapes(shift=0):
    """One shape of every type LabelMe writes (coordinates as floats, as LabelMe saves them)."""
    s = float(shift)
    return [
        {"label": "road", "shape_type": "polygon", "points": [[1.5, 2.2], [40.3, 4.0], [35.0, 30.7], [4.0, 25.0]]},
        {"label": "car", "shape_type": "rectangle", "points": [[30.0 + s, 20.0], [12.4, 9.6]]},  # corners reversed
        {"label": "tree", "shape_type": "circle", "points": [[50.0, 12.0], [50.0 + s, 19.5]]},
        {"label": "wire", "shape_type": "line", "points": [[2.0, 44.0], [60.0, 36.0 - s]]},
        {"label": "wire", "shape_type": "linestrip", "points": [[5.0, 30.0], [20.0, 40.0], [30.0, 31.0]]},
        {"label": "car", "shape_type": "point", "points": [[56.0, 40.0 + s]]},
        {"label": "tree", "shape_type": "mask", "points": [[44.0, 30.0], [52.0, 35.0]], "mask": b64_png(PATCH)},
        {"label": "__ignore__", "shape_type": "polygon", "points": [[60.0, 2.0], [63.0, 2.0], [63.0, 6.0]]},
        {"label": "road", "points": [[20.0, 0.0], [26.0, 0.0], [23.0, 5.0]]},  # no shape_type: a polygon
    ]


def labelme_file(path, shape_list, image_name=None, embed=None):
    data = {"version": "5.4.1", "flags": {}, "shapes": [dict(s, group_id=None, flags={}, description="")
                                                          for s in shape_list],
            "imagePath": image_name, "imageData": embed, "imageHeight": H, "imageWidth": W}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def write_labelme(root, count=4):
    """``count`` files: images next to them (one in a sub-folder refers to ../), the last one embedded."""
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        json_path = root / ("sub" if i == 1 else "") / f"img_{i}.json"
        if i == count - 1:  # the image only inside the JSON (LabelMe's "Save With Image Data")
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            labelme_file(json_path, shapes(i), f"img_{i}.png", base64.b64encode(buffer.getvalue()).decode())
        else:
            (root / "pictures").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "pictures" / f"img_{i}.jpg", quality=95)
            labelme_file(json_path, shapes(i), ("../" if i == 1 else "") + f"pictures/img_{i}.jpg")
    return root


def labelme_reference():
    """LabelMe's own ``utils/shape.py`` (shape_to_mask, shapes_to_label), run without importing the Qt application:
    its package-level imports are replaced by the few names the module uses."""
    spec = importlib.util.find_spec("labelme")
    if (spec is None or not spec.submodule_search_locations) and os.environ.get("CI"):
        raise AssertionError("labelme is not installed: .ci/run installs it (--no-deps) as this test's reference")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("labelme is not installed (it needs Qt, so it is no test dependency); pip install labelme to "
                    "compare with its own rasteriser")
    package = Path(list(spec.submodule_search_locations)[0])
    path = next((p for p in (package / "_utils" / "_shape.py", package / "utils" / "shape.py") if p.is_file()), None)
    if path is None:  # never a skip: a labelme that moved its rasteriser needs this test updated
        raise AssertionError(f"no utils/shape.py or _utils/_shape.py in {package}: where is labelme's shape_to_mask?")
    source = "\n".join(line for line in path.read_text().splitlines()
                       if not re.match(r"\s*from (labelme|\.)", line))
    namespace = {"__name__": "labelme_shape", "ShapeDict": dict, "logger": logging.getLogger("labelme"),
                 "CIRCLE_POINT_COUNT": 2, "LINE_POINT_COUNT": 2, "MIN_POLYGON_POINT_COUNT": 3,
                 "ORIENTED_RECTANGLE_POINT_COUNT": 4, "RECTANGLE_POINT_COUNT": 2}
    exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - a trusted, installed package's source
    return namespace, 'joint="curve"' in source


CLASSES = ["background", "car", "road", "tree", "wire"]  # the labels found, sorted, after background


def test_shapes_match_labelme_shapes_to_label(tmp_path):
    reference, curved_joints = labelme_reference()
    dataset = build_dataset("labelme", write_labelme(tmp_path), "all")
    assert dataset.class_names == CLASSES and dataset.problems == [] and len(dataset) == 4
    values = {**{name: value for value, name in enumerate(CLASSES)}, "__ignore__": 255}
    for index in range(len(dataset)):
        data = json.loads(dataset.samples[index].mask.read_text())
        listed = [dict(s, mask=PATCH if s.get("shape_type") == "mask" else None) for s in data["shapes"]]
        expected, _ = reference["shapes_to_label"](img_shape=(H, W), shapes=listed, label_name_to_value=values)
        mask = dataset[index][1]
        differ = mask != expected
        if not curved_joints:  # LabelMe < 7 draws linestrips with square turns; the rounded ones add a few pixels
            strip = next(s["points"] for s in data["shapes"] if s["shape_type"] == "linestrip")
            theirs = reference["shape_to_mask"]((H, W), strip, "linestrip")
            ours = shape_to_mask(H, W, strip, "linestrip")
            assert (ours >= theirs).all() and (ours & ~theirs).any()
            assert all(min(np.hypot(x - px, y - py) for px, py in strip) <= 5 for y, x in np.argwhere(ours & ~theirs))
            assert (mask[differ] == values["wire"]).all()
            differ &= ~(ours & ~theirs)
        assert not differ.any()
    for shape_type, points in (("polygon", [[3.3, 4.0], [50.0, 10.0], [20.0, 40.0]]),
                               ("circle", [[20, 20], [27, 24]]), ("rectangle", [[40, 30], [5.5, 2.2]]),
                               ("line", [[0, 0], [63, 47]]), ("point", [[10.5, 30.5]]),
                               ("oriented_rectangle", [[10, 5], [30, 15], [25, 25], [5, 15]])):
        np.testing.assert_array_equal(shape_to_mask(H, W, points, shape_type),
                                      reference["shape_to_mask"]((H, W), points, shape_type))


def grow(mask):
    grown = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return grown


def test_shapes_against_independent_geometry():
    yy, xx = np.mgrid[:H, :W]
    rectangle = shape_to_mask(H, W, [[30, 20], [12, 9]], "rectangle")
    expected = np.zeros((H, W), bool)
    expected[9:21, 12:31] = True  # both corners inclusive
    np.testing.assert_array_equal(rectangle, expected)
    for kind, points, radius in (("circle", [[30, 24], [30, 34]], 10), ("point", [[30, 24]], 5)):
        disc = shape_to_mask(H, W, points, kind)
        distance = np.hypot(xx - 30, yy - 24)
        assert disc[distance <= radius - 1].all() and not disc[distance > radius + 1].any()
    polygon = [[3.0, 4.0], [50.0, 10.0], [20.0, 40.0]]
    ours = shape_to_mask(H, W, polygon, "polygon")
    coco = coco_mask.decode(coco_mask.frPyObjects([sum(polygon, [])], H, W))[..., 0].astype(bool)
    # pycocotools samples pixel centres differently: the two rasterisations agree up to one pixel at the edges
    assert (ours & coco).sum() >= 0.9 * coco.sum()
    assert (coco <= grow(ours)).all()
    vertices = {(int(y), int(x)) for x, y in polygon}  # PIL's outline reaches the vertex pixels themselves
    assert {tuple(p) for p in np.argwhere(ours & ~grow(coco)).tolist()} <= vertices
    line = shape_to_mask(H, W, [[0, 24], [63, 24]], "line", line_width=6)
    assert line[22:27].all() and not line[:20].any() and not line[29:].any()  # within 2 of y = 24 in, beyond 4 out
    assert (line.sum(axis=0) == 6).all()  # 6 pixels wide everywhere


def test_class_list_recorded_labels_txt_and_class_names(tmp_path):
    root = write_labelme(tmp_path / "data")
    train_set = build_dataset("labelme", root, "train")
    assert train_set.classes_from_data and train_set.class_names == CLASSES and len(train_set) == 3
    assert sorted(train_set.derived_splits["train"] + train_set.derived_splits["val"]) == [
        "img_0", "img_2", "img_3", "sub/img_1"]
    found = build_dataset("labelme", root, "all")
    named = build_dataset("labelme", root, "all", class_names=["_background_", "road", "car", "tree", "wire"])
    assert not named.classes_from_data
    to_named = np.array([0, 2, 1, 3, 4] + [0] * 250 + [255], np.uint8)  # car and road swap places
    for index in range(len(named)):
        np.testing.assert_array_equal(named[index][1], to_named[found[index][1]])
    (root / "labels.txt").write_text("__ignore__\n_background_\nwire\ntree\nroad\ncar\n")
    from_file = build_dataset("labelme", root, "all")
    assert from_file.class_names == ["_background_", "wire", "tree", "road", "car"]
    with pytest.raises(DatasetError) as info:
        build_dataset("labelme", root, "all", class_names=["background", "road", "car"])
    assert re.search(r"has no usable sample: shape 2 \('tree'\) of LabelMe file .*img_0\.json has the label "
                     r"'tree', which is not a class \(background, road, car\); add it to dataset\.class_names",
                     str(info.value))


def test_bad_files_and_shapes(tmp_path):
    root = write_labelme(tmp_path, count=4)
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    labelme_file(tmp_path / "gone.json", shapes(), "nowhere.jpg")
    broken = shapes()
    broken[0]["points"] = [[1.0, 2.0], [90.0, 4.0], [35.0, 30.0]]  # outside the 64 px wide image
    broken[2]["points"] = [[50.0, 12.0]]                           # a circle of one point
    broken[4]["points"] = [[5.0, 30.0]]                            # a linestrip of one point: skipped, counted
    broken[3]["shape_type"] = "spline"
    (tmp_path / "pictures" / "img_0.jpg").rename(tmp_path / "pictures" / "bad.jpg")
    labelme_file(tmp_path / "bad.json", broken, "pictures/bad.jpg")
    dataset = build_dataset("labelme", root, "all", strict=False)
    problems = "\n".join(dataset.problems)
    for pattern in (r"LabelMe file .*empty\.json is empty",
                    r"LabelMe file .*coco\.json is not a LabelMe file: it has no 'shapes' list; it is a COCO file: "
                    r"use dataset=coco_json",
                    r"image 'nowhere\.jpg' named by LabelMe file .*gone\.json not found next to it, and the file "
                    r"embeds no imageData",
                    r"shape 0 \('road'\) of LabelMe file .*bad\.json has a point \(90, 4\) outside the 64x48 image",
                    r"shape 2 \('tree'\) of LabelMe file .*bad\.json is a circle with 1 points; LabelMe's circle has 2",
                    r"shape 3 \('wire'\) of LabelMe file .*bad\.json has shape_type 'spline'",
                    r"image 'pictures/img_0\.jpg' named by LabelMe file .*img_0\.json not found"):
        assert re.search(pattern, problems), pattern
    assert len(dataset) == 3  # sub/img_1, img_2 and the embedded img_3
    report = check_dataset(dataset, progress=False)
    assert "skipped: 1 linestrips of too few points (e.g. shape 4 ('wire') of LabelMe file" in report.format()
    with pytest.raises(DatasetError, match=r"^LabelMe file .*bad\.json: shape|^shape 0|^LabelMe file .*coco\.json"):
        build_dataset("labelme", root, "all")
    with pytest.raises(DatasetError, match=r"no LabelMe \.json files found in"):
        build_dataset("labelme", tmp_path / "pictures", "all")


def test_grayscale_images_beside_and_inside_the_files(tmp_path):
    """dataset.channels=1: a grayscale image next to its LabelMe file and one embedded in it (imageData) both come
    back as their own single band; an RGB one is refused naming the file."""
    rng = np.random.default_rng(1)
    beside, inside = (rng.integers(0, 255, (H, W), dtype=np.uint8) for _ in range(2))
    (tmp_path / "pictures").mkdir()
    Image.fromarray(beside).save(tmp_path / "pictures" / "beside.png")
    labelme_file(tmp_path / "beside.json", shapes(), "pictures/beside.png")
    labelme_file(tmp_path / "inside.json", shapes(), "inside.png", b64_png(inside))
    dataset = build_dataset("labelme", tmp_path, "all", channels=1)
    images = {Path(sample.mask).stem: dataset[i][0] for i, sample in enumerate(dataset.samples)}
    assert images["beside"].shape == (H, W, 1) and np.array_equal(images["beside"][:, :, 0], beside)
    assert images["inside"].shape == (H, W, 1) and np.array_equal(images["inside"][:, :, 0], inside)
    assert build_dataset("labelme", tmp_path, "all")[0][0].shape == (H, W, 3)  # channels=3: RGB, as before
    wide = rng.integers(0, 65536, (H, W), dtype=np.uint16)  # a 16-bit grayscale image embedded, read as RGB
    labelme_file(tmp_path / "inside.json", shapes(), "inside.png", b64_png(wide))
    dataset = build_dataset("labelme", tmp_path, "all")
    index = next(i for i, sample in enumerate(dataset.samples) if Path(sample.mask).stem == "inside")
    expected = np.floor(wide / 257 + 0.5).astype(np.uint8)  # scaled to 8 bits, not clipped at 255
    assert all(np.array_equal(dataset[index][0][:, :, band], expected) for band in range(3))
    labelme_file(tmp_path / "inside.json", shapes(), "inside.png", b64_png(np.stack([inside] * 3, axis=2)))
    dataset = build_dataset("labelme", tmp_path, "all", channels=1)
    index = next(i for i, sample in enumerate(dataset.samples) if Path(sample.mask).stem == "inside")
    with pytest.raises(DatasetError, match=r"^the image embedded in .*inside\.json has 3 channels but "
                                           r"dataset\.channels is 1"):
        dataset[index]


def test_trains_records_classes_and_evaluates(tmp_path):
    root = write_labelme(tmp_path / "data", count=4)
    result = run_script("check_dataset.py", ["dataset=labelme", f"dataset.root={root}", "dataset.split=all",
                                             f"hydra.run.dir={tmp_path / 'check'}"])
    assert "4 samples, 0 with problems" in result.stdout and "wire" in result.stdout
    run = tmp_path / "run"
    summary = train(compose_config("train", folder_overrides(root, {}, dataset="labelme")), run)
    assert summary["iteration"] == 2 and list(summary["last_metrics"]["per_class_dice"]) == CLASSES
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["class_names"] == CLASSES and state["config"]["dataset"]["class_names"] == CLASSES
    # a new label appears in the folder later: evaluation keeps the recorded classes, and names the new label
    labelme_file(root / "new.json", [{"label": "bike", "points": [[1.0, 1.0], [9.0, 1.0], [5.0, 8.0]]}],
                 "pictures/img_0.jpg")
    failed = run_script("evaluate.py", [f"ckpt={run / 'checkpoints' / 'last.pt'}", "num_workers=0",
                                        "dataset.split=all", f"hydra.run.dir={tmp_path / 'eval0'}"], check=False)
    assert failed.returncode == 1 and "has the label 'bike', which is not a class" in failed.stderr
    (root / "new.json").unlink()
    run_script("evaluate.py", [f"ckpt={run / 'checkpoints' / 'last.pt'}", "num_workers=0",
                               f"hydra.run.dir={tmp_path / 'eval'}"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 1


def test_resume_reuses_the_recorded_class_list():
    from seg.engine.checkpoint import reuse_recorded

    saved = {"dataset": {"name": "labelme", "class_names": CLASSES, "splits": None}, "train": {}}
    current = {"dataset": {"name": "labelme", "class_names": None, "splits": None}, "train": {}}
    reuse_recorded(saved, current)
    assert current["dataset"]["class_names"] == CLASSES
    given = {"dataset": {"name": "labelme", "class_names": ["background", "x"], "splits": None}, "train": {}}
    reuse_recorded(saved, given)
    assert given["dataset"]["class_names"] == ["background", "x"]  # what is given now is kept
