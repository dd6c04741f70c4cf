import csv
import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, run_script, tiny_checkpoint, tiny_overrides
from PIL import Image

from seg.data import SYNTHETIC_CLASSES
from seg.data.voc import voc_palette
from seg.engine.evaluation import evaluate_checkpoint, evaluation_dataset, write_evaluation
from seg.engine.predict import predict
from seg.export import export_checkpoint
from seg.io import DiskFullError
from seg.metrics import metrics_from_confusion

TRAIN = {"train.iters": 10, "train.eval_every": 5, "train.ckpt_every": 5, "train.lr": 0.05, "train.log_every": 5}


def train_tiny(tmp_path_factory, **overrides):
    """A tiny training run: 10 iterations, validated (and checkpointed) at iterations 5 and 10."""
    root = tmp_path_factory.mktemp("trained")
    run_script("train.py", [*tiny_overrides(root / "data", **TRAIN, **overrides), f"hydra.run.dir={root / 'run'}"])
    records = {r["iter"]: r for r in map(json.loads, (root / "run" / "metrics.jsonl").read_text().splitlines())}
    return root, records


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def trained_lraspp(tmp_path_factory):
    """The same run with torchvision's MobileNetV3-Large and LR-ASPP."""
    return train_tiny(tmp_path_factory, backbone="mobilenet_v3_large", **{"model.head": "lraspp"})


@pytest.mark.parametrize("run", ["trained", "trained_lraspp"])
def test_evaluate_script_reproduces_the_logged_validation(run, request, cfg_eval):
    root, records = request.getfixturevalue(run)
    run_dir = root / "eval"
    result = run_script("evaluate.py", [f"ckpt={root / 'run' / 'checkpoints' / 'last.pt'}", "num_workers=0",
                                        f"hydra.run.dir={run_dir}"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = {k: v for k, v in records[10].items() if k != "iter"}
    assert metrics == logged  # exact: the same evaluation code on the same weights
    assert set(metrics) == {"mIoU", "pixel_acc", "mean_acc", "fwIoU", "per_class_iou", "num_images",  # design.md
                            "mDice", "per_class_dice", "per_class_precision", "per_class_recall", "excluded_classes"}
    with (run_dir / "confusion_matrix.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["label \\ prediction", *SYNTHETIC_CLASSES]
    assert [r[0] for r in rows[1:]] == list(SYNTHETIC_CLASSES)
    assert Image.open(run_dir / "confusion_matrix.png").mode == "RGB"
    assert f"mIoU {100 * logged['mIoU']:.2f}" in result.stdout + result.stderr
    # best.pt is iteration 5's weights (the better of the two validations): it reproduces that record.
    best = evaluate_checkpoint(cfg_eval(root / "run" / "checkpoints" / "best.pt"), root / "eval_best")
    assert best == {k: v for k, v in max(records.values(), key=lambda r: r["mIoU"]).items() if k != "iter"}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo over loopback")
def test_ddp_evaluation_equals_one_process(trained, cfg_eval):
    root, records = trained
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
                "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]
    run_script("evaluate.py", [f"ckpt={root / 'run' / 'checkpoints' / 'last.pt'}", "num_workers=0",
                               "tta.flip=true", f"hydra.run.dir={root / 'ddp'}"], launcher=launcher)
    single = evaluate_checkpoint(cfg_eval(root / "run" / "checkpoints" / "last.pt", "tta.flip=true"), root / "single")
    assert json.loads((root / "ddp" / "metrics.json").read_text()) == single
    assert single["num_images"] == 3  # 3 images over 2 ranks, none counted twice


@pytest.mark.parametrize("run", ["trained", "trained_lraspp"])
def test_paper_protocol_and_sliding_window_run(run, request, cfg_eval):
    root, _ = request.getfixturevalue(run)
    ckpt = root / "run" / "checkpoints" / "last.pt"
    tta = evaluate_checkpoint(cfg_eval(ckpt, "os=8", "tta.scales=[0.5,1.0,1.5]", "tta.flip=true"), root / "tta")
    slide = evaluate_checkpoint(cfg_eval(ckpt, "inference.mode=slide", "inference.window=[48,48]",
                                         "inference.stride=[16,16]"), root / "slide")
    for metrics in (tta, slide):
        assert metrics["num_images"] == 3 and 0.0 <= metrics["mIoU"] <= 1.0
        assert set(metrics["per_class_iou"]) == set(SYNTHETIC_CLASSES)
    train_split = evaluate_checkpoint(cfg_eval(ckpt, "dataset.split=train"), root / "train_split")
    assert train_split["num_images"] == 8


def test_dataset_overrides_merge_onto_the_checkpoint_config():
    trained_dataset = {"name": "synthetic", "root": "/a", "split": "train", "val_split": "val", "image_size": 64}
    plain = compose_config("evaluate", ["ckpt=x"])["dataset"]
    assert evaluation_dataset(trained_dataset, plain) == ({**trained_dataset}, "val")
    moved = compose_config("evaluate", ["ckpt=x", "dataset.root=/b", "dataset.split=train", "+dataset.num_val=5"])
    config, split = evaluation_dataset(trained_dataset, moved["dataset"])
    assert split == "train" and config == {**trained_dataset, "root": "/b", "split": "train", "num_val": 5}
    # dataset=<name> replaces the checkpoint's dataset config; its own split is the training split, not evaluated.
    other = compose_config("evaluate", ["ckpt=x", "dataset=cityscapes", "dataset.root=/c"])
    config, split = evaluation_dataset(trained_dataset, other["dataset"])
    assert split == "val" and config["name"] == "cityscapes" and config["root"] == "/c"
    assert "image_size" not in config


@pytest.mark.parametrize("model", [{}, {"backbone": "mobilenet_v3_large", "model.head": "deeplabv3plus",
                                        "model.aux_loss": True}],
                         ids=["resnet18", "mobilenet_v3_large"])
def test_predict_writes_palette_labels_and_overlays_from_checkpoint_and_torchscript(model, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data", **model)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image")

    def run(model, output):
        return predict(compose_config("predict", [f"ckpt={model}", f"input={images}", f"output={output}",
                                                  "tta.flip=true", "device=cpu"]))

    assert run(ckpt, tmp_path / "out")["written"] == 2
    label = Image.open(tmp_path / "out" / "labels" / "sub" / "b.png")
    assert label.mode == "P" and label.size == (56, 40)
    assert np.array_equal(np.array(label.getpalette(), dtype=np.uint8).reshape(-1, 3), voc_palette())
    assert np.array(label).max() < 6
    assert Image.open(tmp_path / "out" / "overlays" / "a.jpg").size == (56, 40)

    exported = tmp_path / "model.ts"
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={exported}", "check.sizes=[[48,64]]"]))
    run(exported, tmp_path / "out_ts")
    for name in ("a.png", "sub/b.png"):
        from_checkpoint = np.array(Image.open(tmp_path / "out" / "labels" / name))
        from_torchscript = np.array(Image.open(tmp_path / "out_ts" / "labels" / name))
        # the exported file's inner model takes the normalised input directly: no un-normalising round trip
        assert np.array_equal(from_checkpoint, from_torchscript)


def test_split_without_labelled_pixels_reports_null(tmp_path, caplog, cfg_eval):
    """Every val label is 255: no metric can be measured; null (not 0.0) in metrics.json, metrics.jsonl and the
    table, and training goes on without a best.pt."""
    from seg.config import dataset_kwargs
    from seg.data import build_dataset
    from seg.engine.trainer import train

    overrides = tiny_overrides(tmp_path / "data")
    val = build_dataset(**dataset_kwargs(compose_config("train", overrides)["dataset"], split="val"))
    for index in range(len(val)):
        Image.fromarray(np.full((64, 64), 255, dtype=np.uint8)).save(val.samples[index].mask)
    summary = train(compose_config("train", overrides), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    nulls = {"mIoU": None, "pixel_acc": None, "mean_acc": None, "fwIoU": None, "mDice": None}
    assert {k: record[k] for k in nulls} == nulls and summary["last_metrics"]["mIoU"] is None
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "val iter 2: mIoU null mDice null pixel_acc null mean_acc null (3 images)" in log_text
    metrics = evaluate_checkpoint(cfg_eval(tmp_path / "run" / "checkpoints" / "last.pt"), tmp_path / "eval")
    assert {k: metrics[k] for k in nulls} == nulls and metrics["num_images"] == 3
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {k: written[k] for k in nulls} == nulls and set(written["per_class_iou"].values()) == {None}
    assert "mIoU -  mDice -  pixel acc -  mean acc -  fwIoU -  (3 images)" in caplog.text
    assert "no labelled pixels in the evaluated images" in caplog.text


def test_a_full_disk_while_writing_results_names_the_file_and_removes_it(tmp_path, monkeypatch):
    matrix = torch.tensor([[5, 1], [2, 7]])
    metrics = metrics_from_confusion(matrix, ["a", "b"])
    real_save = Image.Image.save

    def full(image, path, *args, **kwargs):
        real_save(image, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # cut short where the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(DiskFullError) as raised:
        write_evaluation(tmp_path, metrics, matrix, ["a", "b"])
    assert str(raised.value).startswith(f"disk full: could not write {tmp_path / 'confusion_matrix.png'}; ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.csv", "metrics.json"]
    assert json.loads((tmp_path / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]
