import json
import sys

import pytest
import torch
from helpers import compose_config, losses_from_log, run_script, tiny_overrides
from hydra.errors import MissingConfigException

from seg.config import validate_train
from seg.engine import losses as losses_module
from seg.engine.checkpoint import load_checkpoint
from seg.engine.trainer import TrainingDiverged, train
from seg.models import build_model


def test_default_config_composes_and_validates():
    cfg = compose_config("train", [])
    validate_train(cfg)
    assert cfg["backbone"]["name"] == "resnet50" and cfg["os"] == 16
    assert cfg["dataset"]["name"] == "synthetic"
    assert cfg["backbone"]["pretrained"] == "none"  # the default run needs no download


def test_unknown_backbone_group_lists_options():
    with pytest.raises(MissingConfigException, match="resnet18"):
        compose_config("train", ["backbone=resnet9"])


@pytest.mark.parametrize("experiment", ["voc_paper", "cityscapes"])
def test_paper_recipes_compose(experiment):
    cfg = compose_config("train", [f"experiment={experiment}", "dataset.root=/data"])
    validate_train(cfg)
    assert cfg["backbone"]["pretrained"] == "imagenet"
    assert cfg["os"] == 16 and cfg["train"]["poly_power"] == 0.9


@pytest.mark.parametrize("dataset, crop, iters", [("voc_aug", 513, 30000), ("cityscapes", 769, 90000),
                                                  ("coco", 480, 86000), ("ade20k", 512, 80000),
                                                  ("coco_stuff", 512, 80000), ("pascal_context", 480, 40000)])
def test_real_dataset_selects_its_recipe(dataset, crop, iters):
    cfg = compose_config("train", [f"dataset={dataset}", "dataset.root=/data", "backbone=resnet101"])
    validate_train(cfg)
    assert cfg["backbone"] == {"source": "torchvision", "name": "resnet101", "pretrained": "imagenet",
                               "stem": "standard"}
    assert (cfg["train"]["crop_size"], cfg["train"]["iters"]) == (crop, iters)
    override = compose_config("train", [f"dataset={dataset}", "dataset.root=/data", "train.crop_size=321"])
    assert override["train"]["crop_size"] == 321  # the command line wins over the recipe


def test_missing_imagenet_weights_fail_before_work(tmp_path, monkeypatch, cfg_train):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"ImageNet weights for resnet18 are not cached at .*resnet18-"):
        train(cfg_train(**{"backbone.pretrained": "imagenet"}), tmp_path / "run")
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_invalid_value_fails_before_work(tmp_path):
    result = run_script("train.py", [*tiny_overrides(tmp_path / "data"), "os=12", f"hydra.run.dir={tmp_path / 'run'}"],
                        check=False)
    assert result.returncode == 1
    message = "os must be one of [8, 16, 32], got 12"
    assert f"error: {message}" in result.stderr
    assert (result.stdout + result.stderr).count(message) == 1  # one line on the console
    assert message in (tmp_path / "run" / "train.log").read_text()  # and recorded in the run's log
    assert not (tmp_path / "data").exists()  # nothing was generated


def test_missing_dataset_root_is_one_line(tmp_path):
    result = run_script("train.py", ["dataset=voc", f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: dataset.root must be set on the command line")


def test_train_script_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    run_script("train.py", [*tiny_overrides(tmp_path / "data"), f"hydra.run.dir={run_dir}"])
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    log_text = (run_dir / "train.log").read_text()
    assert "iter 2/2 loss" in log_text and "val iter 2" in log_text
    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["iteration"] == 2
        assert state["config"]["backbone"]["name"] == "resnet18"
        assert {"optimizer", "scheduler", "scaler", "rng", "sampler", "class_names", "versions"} <= set(state)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()
    assert {"train/loss", "train/lr", "val/mIoU", "val/IoU/background"} <= set(events["scalars"])
    assert events["images"] == ["val/overlay_0"]  # tb_images=1: image | ground truth | prediction
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [2]
    assert 0.0 <= records[0]["mIoU"] <= 1.0 and set(records[0]["per_class_iou"]) == set(state["class_names"])


def test_multirun_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    run_script("train.py", ["-m", "os=8,16", *tiny_overrides(tmp_path / "data", **{"train.iters": 1}),
                            f"hydra.sweep.dir={sweep}"])
    for job, output_stride in (("0", 8), ("1", 16)):
        state = load_checkpoint(sweep / job / "checkpoints" / "last.pt")
        assert state["config"]["os"] == output_stride and state["iteration"] == 1


@pytest.mark.parametrize("workers, backbone, head", [(0, "resnet18", "deeplabv3"), (2, "resnet18", "deeplabv3"),
                                                     (0, "mobilenet_v3_large", "lraspp")])
def test_resume_is_exact(tmp_path, workers, backbone, head, cfg_train):
    overrides = {"train.iters": 6, "train.eval_every": 0, "train.ckpt_every": 3, "train.num_workers": workers,
                 "backbone": backbone, "model.head": head, "model.aux_loss": str(head != "lraspp").lower()}
    straight = train(cfg_train(**overrides), tmp_path / "straight")
    stopped = train(cfg_train(**overrides, **{"train.stop_at": 3}), tmp_path / "resumed")
    assert stopped["iteration"] == 3
    # Resume in a new process, as a user would after a crash.
    run_script("train.py", [*tiny_overrides(tmp_path / "data", **overrides),
                            f"resume={tmp_path / 'resumed' / 'checkpoints' / 'last.pt'}",
                            f"hydra.run.dir={tmp_path / 'hydra_resume'}"])
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 6
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert straight["losses"] == losses_from_log(tmp_path / "resumed" / "train.log")
    assert len(straight["losses"]) == 6


def test_resume_refuses_shape_change(tmp_path, cfg_train):
    train(cfg_train(), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(ValueError, match="backbone.name was 'resnet18'"):
        train(cfg_train(backbone="resnet34", resume=ckpt), tmp_path / "run2")


def test_resume_with_another_length_follows_the_new_schedule(tmp_path, cfg_train):
    run = tmp_path / "run"
    train(cfg_train(**{"train.iters": 4, "train.stop_at": 2}), run)
    summary = train(cfg_train(resume=run / "checkpoints" / "last.pt", **{"train.iters": 3}), run)
    assert summary["iteration"] == 3
    scheduler = load_checkpoint(run / "checkpoints" / "last.pt")["scheduler"]
    # Poly reaches 0 at the new last iteration; the old length (4) would leave (1 - 3/4) ** 0.9 of the lr.
    assert scheduler["last_epoch"] == 3 and scheduler["_last_lr"] == [0.0] * len(scheduler["_last_lr"])


def _nan_on(calls_to_poison):
    real = losses_module.segmentation_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] in calls_to_poison else loss

    return poisoned


def test_nonfinite_steps_are_skipped(tmp_path, monkeypatch, cfg_train):
    monkeypatch.setattr(losses_module, "segmentation_loss", _nan_on({2, 4}))
    summary = train(cfg_train(**{"train.iters": 5, "train.eval_every": 0}), tmp_path / "run")
    assert summary["nonfinite_steps"] == 2
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["iteration"] == 5 and state["nonfinite_steps"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_repeated_nonfinite_stops_and_keeps_checkpoint(tmp_path, monkeypatch, cfg_train):
    run = tmp_path / "run"
    train(cfg_train(**{"train.iters": 2}), run)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    monkeypatch.setattr(losses_module, "segmentation_loss", _nan_on(set(range(1, 100))))
    with pytest.raises(TrainingDiverged, match="3 consecutive training steps"):
        train(cfg_train(resume=run / "checkpoints" / "last.pt",
                      **{"train.iters": 8, "train.max_nonfinite": 3, "train.ckpt_every": 0}), run)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 2


def test_batch_size_one_trains(tmp_path, cfg_train):
    summary = train(cfg_train(**{"train.batch_size": 1, "model.head": "deeplabv3plus"}), tmp_path / "run")
    assert summary["iteration"] == 2 and summary["last_metrics"]["num_images"] == 3


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over loopback")
def test_ddp_two_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
                "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]
    run_script("train.py", [*tiny_overrides(tmp_path / "data", **{"train.iters": 3, "train.eval_every": 3}),
                            f"hydra.run.dir={run_dir}"], launcher=launcher)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert (run_dir / "train.log").read_text().count("data: synthetic") == 1  # only rank 0 logs INFO
    logged = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["num_images"] == 3  # 3 images over 2 ranks: no padded duplicate counted
    # One process evaluating the saved weights gets the same numbers as the two ranks did.
    from seg.config import dataset_kwargs
    from seg.data import build_dataset
    from seg.engine.checkpoint import model_from_checkpoint
    from seg.engine.evaluation import evaluate

    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = state["config"]
    val_set = build_dataset(**dataset_kwargs(cfg["dataset"], split=cfg["dataset"]["val_split"]))
    metrics = evaluate(model_from_checkpoint(state), val_set, torch.device("cpu")).metrics
    assert metrics["mIoU"] == logged["mIoU"]
    assert metrics["per_class_iou"] == logged["per_class_iou"]


@pytest.mark.slow
def test_compiled_training_writes_plain_checkpoints(tmp_path, cfg_train):
    """train.compile=true (about a minute of compilation on a CPU): checkpoints hold the plain model's keys."""
    train(cfg_train(**{"train.compile": "true", "train.iters": 2}), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not any(key.startswith(("_orig_mod.", "module.")) for key in state["model"])
    assert state["model"].keys() == build_model("resnet18", state["num_classes"]).state_dict().keys()
