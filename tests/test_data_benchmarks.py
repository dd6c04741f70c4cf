"""The field's benchmark datasets (ADE20K, COCO-Stuff-164k, Pascal Context) on tiny files in their real layouts:
label mappings against hand-written masks and independent tables, layouts, bad files, check, training."""

import csv
import json
import re

import numpy as np
import pytest
from helpers import compose_config, run_script
from PIL import Image
from pycocotools import mask as coco_mask
from torchvision.models._meta import _COCO_CATEGORIES

from seg.config import dataset_kwargs
from seg.data import DatasetError, build_dataset, check_dataset
from seg.data.benchmark_examples import write_benchmark_example
from seg.data.coco_stuff import COCO_STUFF_CLASSES, RAW_LABELS
from seg.data.pascal_context import CONTEXT59_CLASSES
from seg.data.pascal_context_json import prepare_pascal_context
from seg.engine.checkpoint import load_checkpoint
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.trainer import train
from seg.outputs import OutputExists

SIZE = 64


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def photo(seed):
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def tiled(values, seed=0):
    """A SIZE x SIZE mask holding each of ``values`` (in shuffled blocks of 4 x 4 pixels)."""
    values = np.resize(np.random.default_rng(seed).permutation(np.asarray(values, dtype=np.uint8)), (SIZE // 4) ** 2)
    return np.kron(values.reshape(SIZE // 4, SIZE // 4), np.ones((4, 4), dtype=np.uint8))


def with_corner(mask, corner):
    """``mask`` with the 2 x 3 hand-written ``corner`` at its top-left."""
    mask = mask.copy()
    mask[:2, :3] = corner
    return mask


# -- ADE20K ---------------------------------------------------------------------------------------------------

def write_ade(root, subset, index, mask):
    prefix = {"training": "ADE_train", "validation": "ADE_val"}[subset]
    stem = f"{prefix}_{index:08d}"
    folder = root / "ADEChallengeData2016"
    save(folder / "images" / subset / f"{stem}.jpg", photo(index))
    save(folder / "annotations" / subset / f"{stem}.png", mask)
    return stem


ADE_CORNER = np.array([[0, 1, 150], [2, 0, 75]], np.uint8)
ADE_EXPECTED = np.array([[255, 0, 149], [1, 255, 74]], np.uint8)  # 0 (other) ignored, the rest shifted down


def ade(root):
    write_ade(root, "training", 1, with_corner(tiled(range(151)), ADE_CORNER))
    write_ade(root, "training", 2, tiled([0, 3, 12], seed=1))
    write_ade(root, "validation", 1, tiled([0, 1, 2, 150], seed=2))
    return root


def test_ade20k_labels_names_and_layout(tmp_path):
    ade(tmp_path)
    dataset = build_dataset("ade20k", tmp_path, "train")
    assert len(dataset) == 2 and dataset.sample_id(0) == "ADE_train_00000001"
    assert dataset.num_classes == 150 and dataset.class_names[:3] == ["wall", "building", "sky"]
    assert dataset.class_names[12] == "person" and dataset.class_names[149] == "flag"
    assert tuple(dataset.palette[0]) == (120, 120, 120) and tuple(dataset.palette[149]) == (92, 0, 255)
    image, mask = dataset[0]
    assert image.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(mask[:2, :3], ADE_EXPECTED)
    raw = np.asarray(Image.open(tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000001.png"))
    np.testing.assert_array_equal(mask, np.where(raw == 0, 255, raw.astype(int) - 1))
    assert set(np.unique(mask)) == set(range(150)) | {255}
    # the ADEChallengeData2016 folder itself as root, and the splits
    folder = tmp_path / "ADEChallengeData2016"
    assert [build_dataset("ade20k", folder, "val").sample_id(0)] == ["ADE_val_00000001"]
    assert len(build_dataset("ade20k", tmp_path, "all")) == 3
    with pytest.raises(DatasetError, match="dataset.split must be train, val or all for ADE20K"):
        build_dataset("ade20k", tmp_path, "test")
    with pytest.raises(DatasetError, match="has 150 classes"):
        build_dataset("ade20k", tmp_path, "train", num_classes=151)


def test_ade20k_bad_files_one_line_each(tmp_path):
    ade(tmp_path)
    bad = write_ade(tmp_path, "training", 3, tiled([0, 5, 151, 200]))
    (tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(DatasetError, match=r"^image \S+ADE_train_00000002\.jpg has no annotation: \S+"
                                           r"annotations/training/ADE_train_00000002\.png not found; python scripts"):
        build_dataset("ade20k", tmp_path, "train")
    dataset = build_dataset("ade20k", tmp_path, "train", strict=False)
    with pytest.raises(DatasetError, match=rf"^mask \S+{bad}\.png holds values \[151, 200\] that are not ADE20K "):
        dataset[1]
    report = check_dataset(dataset, progress=False)
    assert len(report.problems) == 2 and "ADE_train_00000002.jpg has no annotation" in report.problems[0]
    assert report.problems[1].startswith(f"{bad}: mask ")


# -- COCO-Stuff-164k ------------------------------------------------------------------------------------------

def test_coco_stuff_ids_follow_coco_categories():
    """Raw id r is COCO category r + 1: the 80 things are COCO's categories (torchvision's table, 'N/A' = unused
    id), id 91 is unused, and the 91 stuff ids 92-182 follow in order."""
    things = [(raw, name) for raw, name in enumerate(_COCO_CATEGORIES[1:]) if name != "N/A"]
    assert len(things) == 80 and [name for _, name in things] == list(COCO_STUFF_CLASSES[:80])
    dataset_ids = {raw: index for index, (raw, _) in enumerate(things)}
    dataset_ids.update({raw: 80 + k for k, raw in enumerate(range(91, 182))})
    assert len(dataset_ids) == 171 and len(COCO_STUFF_CLASSES) == 171
    for raw in range(256):
        expected = dataset_ids.get(raw, 255 if raw == 255 else -1)
        assert RAW_LABELS[raw] == expected, raw


COCO_CORNER = np.array([[0, 12, 181], [255, 91, 10]], np.uint8)
COCO_EXPECTED = np.array([[0, 11, 170], [255, 80, 10]], np.uint8)  # mmseg's clsID_to_trID: 12->11, 91->80, 181->170


def write_coco_stuff(root, subset, image_id, mask, layout="raw", images="images"):
    stem = f"{image_id:012d}"
    save(root / images / subset / f"{stem}.jpg", photo(image_id))
    name = {"raw": f"annotations/{subset}/{stem}.png", "train_ids": f"annotations/{subset}/{stem}_labelTrainIds.png",
            "zip": f"stuffthingmaps_trainval2017/{subset}/{stem}.png"}[layout]
    save(root / name, mask)
    return stem


def test_coco_stuff_layouts_and_mapping(tmp_path):
    # every raw id COCO-Stuff uses: COCO's thing categories (ids 1-90 in torchvision's table) and the stuff ids 92-182
    used = [i for i in range(90) if _COCO_CATEGORIES[i + 1] != "N/A"] + list(range(91, 182))
    write_coco_stuff(tmp_path, "train2017", 9, with_corner(tiled(used + [255]), COCO_CORNER))
    write_coco_stuff(tmp_path, "train2017", 25, with_corner(tiled([1, 2]), COCO_EXPECTED), "train_ids")
    write_coco_stuff(tmp_path, "train2017", 30, tiled([0, 181]), "raw")
    write_coco_stuff(tmp_path, "train2017", 30, tiled([5, 100]), "train_ids")  # preferred over the raw map
    write_coco_stuff(tmp_path, "val2017", 139, with_corner(tiled([5]), COCO_CORNER), "zip")
    dataset = build_dataset("coco_stuff", tmp_path, "train")
    assert [dataset.sample_id(i) for i in range(3)] == ["000000000009", "000000000025", "000000000030"]
    assert dataset.num_classes == 171 and dataset.class_names[80] == "banner" and dataset.class_names[-1] == "wood"
    mask = dataset[0][1]
    np.testing.assert_array_equal(mask[:2, :3], COCO_EXPECTED)
    assert set(np.unique(mask)) == set(range(171)) | {255}
    np.testing.assert_array_equal(dataset[1][1][:2, :3], COCO_EXPECTED)
    assert set(np.unique(dataset[2][1])) == {5, 100}
    val = build_dataset("coco_stuff", tmp_path, "val")
    np.testing.assert_array_equal(val[0][1][:2, :3], COCO_EXPECTED)
    assert len(build_dataset("coco_stuff", tmp_path, "all")) == 4


def test_coco_stuff_images_beside_annotations_and_bad_files(tmp_path):
    write_coco_stuff(tmp_path, "val2017", 1, tiled([0, 11, 90, 182]), images=".")  # COCO's own val2017/ folder
    write_coco_stuff(tmp_path, "val2017", 2, tiled([171, 3]), "train_ids", images=".")
    save(tmp_path / "val2017" / "000000000003.jpg", photo(3))
    with pytest.raises(DatasetError, match=r"^image \S+000000000003\.jpg has no annotation: \S+"
                                           r"000000000003_labelTrainIds\.png or .*stuffthingmaps_trainval2017"):
        build_dataset("coco_stuff", tmp_path, "val")
    dataset = build_dataset("coco_stuff", tmp_path, "val", strict=False)
    with pytest.raises(DatasetError, match=r"000000000001\.png holds values \[11, 90, 182\] that are not COCO-Stuff"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"000000000002_labelTrainIds\.png holds values \[171\] that are not"):
        dataset[1]
    assert len(check_dataset(dataset, progress=False).problems) == 3


# -- Pascal Context -------------------------------------------------------------------------------------------

CONTEXT_CORNER = np.array([[0, 1, 59], [255, 30, 0]], np.uint8)
CONTEXT59_EXPECTED = np.array([[255, 0, 58], [255, 29, 255]], np.uint8)


def context(root):
    folder = root / "VOCdevkit" / "VOC2010"
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    for split, names in ids.items():
        (folder / "ImageSets/SegmentationContext").mkdir(parents=True, exist_ok=True)
        (folder / "ImageSets/SegmentationContext" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        for k, name in enumerate(names):
            save(folder / "JPEGImages" / f"{name}.jpg", photo(k))
            save(folder / "SegmentationClassContext" / f"{name}.png", with_corner(tiled(range(60), k), CONTEXT_CORNER))
    return folder


def test_pascal_context_59_and_60(tmp_path):
    folder = context(tmp_path)
    dataset = build_dataset("pascal_context", tmp_path, "train")
    assert dataset.num_classes == 59 and list(dataset.class_names) == sorted(CONTEXT59_CLASSES)
    assert dataset.class_names[0] == "aeroplane" and tuple(dataset.palette[0]) == (180, 120, 120)
    mask = dataset[0][1]
    np.testing.assert_array_equal(mask[:2, :3], CONTEXT59_EXPECTED)
    assert set(np.unique(mask)) == set(range(59)) | {255}
    full = build_dataset("pascal_context", folder, "val", reduce_zero_label=False)
    assert full.num_classes == 60 and full.class_names == ["background"] + dataset.class_names
    np.testing.assert_array_equal(full[0][1][:2, :3], CONTEXT_CORNER)
    assert len(build_dataset("pascal_context", tmp_path, "all")) == 3
    with pytest.raises(DatasetError, match="dataset.reduce_zero_label must be true"):
        build_dataset("pascal_context", tmp_path, "train", reduce_zero_label="yes")
    with pytest.raises(DatasetError, match=r"split file of split 'test' not found: .*SegmentationContext/test\.txt"):
        build_dataset("pascal_context", tmp_path, "test")


def test_pascal_context_bad_files(tmp_path):
    folder = context(tmp_path)
    save(folder / "SegmentationClassContext/2008_000003.png", tiled([0, 60, 61]))
    (folder / "SegmentationClassContext/2008_000002.png").unlink()
    with pytest.raises(DatasetError, match=r"^image \S+2008_000002\.jpg has no annotation: \S+"
                                           r"SegmentationClassContext/2008_000002\.png not found"):
        build_dataset("pascal_context", tmp_path, "train")
    dataset = build_dataset("pascal_context", tmp_path, "train", strict=False)
    with pytest.raises(DatasetError, match=r"2008_000003\.png holds values \[60, 61\] that are not Pascal Context"):
        dataset[0]


# -- check_dataset.py and training ----------------------------------------------------------------------------

def test_check_dataset_script_lists_every_problem(tmp_path):
    ade(tmp_path)
    write_ade(tmp_path, "training", 3, tiled([0, 151]))
    (tmp_path / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png").unlink()
    result = run_script("check_dataset.py", ["dataset=ade20k", f"dataset.root={tmp_path}"], check=False)
    assert result.returncode == 1, result.stderr
    assert "3 samples" not in result.stdout and "2 samples, 2 with problems" in result.stdout
    assert re.search(r"problem: image \S+ADE_train_00000002\.jpg has no annotation", result.stdout)
    assert re.search(r"problem: ADE_train_00000003: mask \S+ADE_train_00000003\.png holds values \[151\]",
                     result.stdout)
    assert "  149 flag" in result.stdout


WRITERS = {"ade20k": ade, "coco_stuff": lambda root: [write_coco_stuff(root, s, i, tiled([0, 12, 181, 255], i))
                                                      for s, i in (("train2017", 1), ("train2017", 2), ("val2017", 3))],
           "pascal_context": context}


VAL_MASKS = {"ade20k": "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png",
             "coco_stuff": "annotations/val2017/000000000003.png",
             "pascal_context": "VOCdevkit/VOC2010/SegmentationClassContext/2008_000007.png"}
HAND_MAPS = {"ade20k": lambda v: None if v == 0 else v - 1, "coco_stuff": {0: 0, 12: 11, 181: 170}.get,
             "pascal_context": lambda v: None if v in (0, 255) else v - 1,
             "pascal_context60": lambda v: None if v == 255 else v}


@pytest.mark.parametrize("name, options", [("ade20k", {}), ("coco_stuff", {}), ("pascal_context", {}),
                                           ("pascal_context", {"dataset.reduce_zero_label": "false"})],
                         ids=["ade20k", "coco_stuff", "pascal_context59", "pascal_context60"])
def test_trains_and_evaluates(tmp_path, monkeypatch, cfg_eval, name, options):
    monkeypatch.setenv("SEG_CACHE", str(tmp_path / "cache"))
    WRITERS[name](tmp_path / "data")
    overrides = {"backbone": "resnet18", "backbone.pretrained": "none", "device": "cpu", "dataset": name,
                 "dataset.root": tmp_path / "data", "train.crop_size": SIZE, "train.batch_size": 2, "train.iters": 2,
                 "train.eval_every": 2, "train.ckpt_every": 2, "train.log_every": 1, "train.num_workers": 0,
                 "train.tb_images": 0, "train.class_weights": "median_frequency", **options}
    cfg = compose_config("train", [f"{k}={v}" for k, v in overrides.items()])
    assert cfg["model"]["aux_loss"] and cfg["train"]["lr"] in (0.01, 0.004)  # the dataset's recipe
    summary = train(cfg, tmp_path / "run")
    variant = {"reduce_zero_label": False} if options else {}
    names = build_dataset(name, tmp_path / "data", "val", **variant).class_names
    assert len(names) == {"ade20k": 150, "coco_stuff": 171, "pascal_context": 60 if options else 59}[name]
    assert summary["iteration"] == 2 and np.isfinite([loss for _, loss in summary["losses"]]).all()
    assert list(summary["last_metrics"]["per_class_dice"]) == names
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt)["class_names"] == names
    # evaluate.py's path: the dataset rebuilt from the checkpoint's config, its val split, the same numbers
    metrics = evaluate_checkpoint(cfg_eval(ckpt), tmp_path / "eval")
    assert list(metrics["per_class_iou"]) == names
    assert all(metrics[k] == summary["last_metrics"][k] for k in ("mIoU", "pixel_acc", "per_class_iou"))
    # the confusion matrix counts each val pixel under its class, mapped here by hand from the raw file
    raw = np.asarray(Image.open(tmp_path / "data" / VAL_MASKS[name]))
    to_class = HAND_MAPS["pascal_context60" if options else name]
    expected = {}
    for value, count in zip(*np.unique(raw, return_counts=True)):
        if to_class(int(value)) is not None:
            expected[names[to_class(int(value))]] = expected.get(names[to_class(int(value))], 0) + int(count)
    with (tmp_path / "eval" / "confusion_matrix.csv").open() as handle:
        rows = {row[0]: sum(map(int, row[1:])) for row in list(csv.reader(handle))[1:]}
    assert {k: v for k, v in rows.items() if v} == expected


# -- Pascal Context from the official JSON (scripts/prepare_pascal_context.py) --------------------------------

def rle(binary):
    """A PASCAL in Detail segmentation: compressed RLE with the counts as a string, as the JSON stores it."""
    encoded = coco_mask.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def context_json(path, extra_category=None):
    """Three 6 x 8 images: 2008_000002 with two overlapping annotations (the later one wins), 2008_000003 with
    none (all background), 2008_000007 (val) with one; category ids of the 459 labels (2 aeroplane, 284 person,
    458 wood)."""
    left, right, top = (np.zeros((6, 8), bool) for _ in range(3))
    left[:, :5], right[:, 3:], top[:2, :] = True, True, True
    annotations = [{"id": 10, "image_id": 2008000002, "category_id": 2, "segmentation": rle(left)},
                   {"id": 11, "image_id": 2008000007, "category_id": 458, "segmentation": rle(top)},
                   {"id": 12, "image_id": 2008000002, "category_id": extra_category or 284, "segmentation": rle(right)}]
    images = [{"image_id": 2008000000 + n, "file_name": f"2008_{n:06d}.jpg", "height": 6, "width": 8, "phase": phase}
              for n, phase in ((3, "train"), (2, "train"), (7, "val"))]
    path.write_text(json.dumps({"images": images, "annos_segmentation": annotations, "categories": []}))


def test_prepare_pascal_context_from_the_official_json(tmp_path):
    folder = tmp_path / "VOCdevkit" / "VOC2010"
    for n in (2, 3, 7):
        save(folder / "JPEGImages" / f"2008_{n:06d}.jpg", np.zeros((6, 8, 3), np.uint8))
    context_json(folder / "trainval_merged.json")
    result = run_script("prepare_pascal_context.py", ["--json", str(folder / "trainval_merged.json"),
                                                      "--voc", str(tmp_path)])
    assert "train: 2 images (the full release gives 4996)" in result.stdout
    lists = folder / "ImageSets" / "SegmentationContext"
    assert (lists / "train.txt").read_text() == "2008_000002\n2008_000003\n"
    assert (lists / "val.txt").read_text() == "2008_000007\n"
    # labels: 0 background, aeroplane 1, person 37, wood 59 (alphabetical among the 59); person painted last
    expected = np.array([[1, 1, 1, 37, 37, 37, 37, 37]] * 6, np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "SegmentationClassContext/2008_000002.png")),
                                  expected)
    dataset = build_dataset("pascal_context", tmp_path, "train")
    assert dataset.class_names[0] == "aeroplane" and dataset.class_names[36] == "person"
    np.testing.assert_array_equal(dataset[0][1], expected - 1)
    np.testing.assert_array_equal(dataset[1][1], np.full((6, 8), 255, np.uint8))  # background only
    val = build_dataset("pascal_context", tmp_path, "val")
    assert val.class_names[58] == "wood" and (val[0][1][:2] == 58).all() and (val[0][1][2:] == 255).all()
    # a second run does not write over the lists; an id outside the 59 classes names the image
    with pytest.raises(OutputExists, match=r"train\.txt exists already: choose another --voc, or pass --overwrite"):
        prepare_pascal_context(folder / "trainval_merged.json", folder, progress=False)
    context_json(folder / "trainval_merged.json", extra_category=1)
    with pytest.raises(DatasetError, match=r"image 2008_000002\.jpg in \S+json has category ids \[1\] that are not"):
        prepare_pascal_context(folder / "trainval_merged.json", tmp_path, overwrite=True, progress=False)
    (folder / "trainval_merged.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"is not PASCAL in Detail's trainval_merged\.json"):
        prepare_pascal_context(folder / "trainval_merged.json", tmp_path, overwrite=True, progress=False)


# -- make_example_benchmark.py --------------------------------------------------------------------------------

EXAMPLE_CLASSES = {"ade20k": {"wall", "sky", "tree", "person", "car"},
                   "coco_stuff": {"person", "car", "chair", "clouds", "sky-other"},
                   "pascal_context": {"aeroplane", "person", "car", "wood", "wall"}}


@pytest.mark.parametrize("fmt", sorted(EXAMPLE_CLASSES))
def test_example_writer_gives_a_clean_dataset(tmp_path, fmt):
    write_benchmark_example(fmt, tmp_path, num_images=4, image_size=32)
    assert len(build_dataset(fmt, tmp_path, "train")) == 3 and len(build_dataset(fmt, tmp_path, "val")) == 1
    dataset = build_dataset(fmt, tmp_path, "all")
    report = check_dataset(dataset, progress=False)
    assert report.ok and report.num_samples == 4
    present = {dataset.class_names[i] for i in np.flatnonzero(report.pixel_counts[:dataset.num_classes])}
    assert present and present <= EXAMPLE_CLASSES[fmt]
    assert report.pixel_counts[255] > 0  # the background: ADE20K's "other", COCO-Stuff's unlabeled, Context's 0
    with pytest.raises(OutputExists, match="exists already"):
        write_benchmark_example(fmt, tmp_path)
    # the same through check_dataset.py's config: configs/dataset/<fmt>.yaml's keys reach the reader
    cfg = compose_config("check_dataset", [f"dataset={fmt}", f"dataset.root={tmp_path}", "dataset.split=val"])
    assert len(build_dataset(**dataset_kwargs(cfg["dataset"]), strict=False)) == 1


def test_make_example_benchmark_script(tmp_path):
    result = run_script("make_example_benchmark.py", ["format=coco_stuff", f"out={tmp_path}", "num_images=2",
                                                      "image_size=32"])
    assert f"dataset=coco_stuff dataset.root={tmp_path}" in result.stdout
    assert sorted(p.name for p in (tmp_path / "annotations" / "val2017").iterdir()) == ["000000000002.png"]
    with pytest.raises(DatasetError, match="^format must be one of ade20k, coco_stuff, pascal_context, got 'city"):
        write_benchmark_example("cityscapes", tmp_path / "x")
