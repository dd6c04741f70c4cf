"""The paper's training protocol: BatchNorm momentum, frozen BatchNorm, a frozen backbone, gradient accumulation."""

import sys

import pytest
import torch
from helpers import compose_config, run_script, tiny_overrides
from torch import nn

from seg.config import ConfigError, validate_train
from seg.engine import batchnorm
from seg.engine.checkpoint import CheckpointError, load_checkpoint
from seg.engine.device import unwrap
from seg.engine.trainer import Trainer, train
from seg.models import build_model

STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")


def run_trainer(cfg, run_dir):
    """Train as ``train`` does, keeping the Trainer: returns it and the model's state before the first step."""
    validate_train(cfg)
    trainer = Trainer(cfg, run_dir, "cpu")
    try:
        before = {key: value.clone() for key, value in unwrap(trainer.model).state_dict().items()}
        trainer.run()
    finally:
        trainer.files.close()
        trainer.lock.release()
    return trainer, before


def bn_names(model: nn.Module, prefix: str = ""):
    """State-dict keys of the BatchNorm layers (statistics and affine parameters) under ``prefix``."""
    return {f"{name}.{key}" for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)
            and name.startswith(prefix) for key in (*STAT_NAMES, "weight", "bias")}


def optimized(trainer):
    return {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}


def test_freeze_bn_keeps_statistics_and_affine_parameters(cfg_train, tmp_path):
    # eval_every=1: each evaluation ends with model.train(), which must not wake the frozen layers
    trainer, before = run_trainer(cfg_train(**{"train.freeze_bn": True, "train.iters": 2, "train.eval_every": 1}),
                                  tmp_path / "run")
    model = unwrap(trainer.model)
    after = model.state_dict()
    frozen = bn_names(model)
    assert len(frozen) > 100  # resnet18 + ASPP + decoder: dozens of BatchNorm layers
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    moved = [key for key in after if key not in frozen and not torch.equal(before[key], after[key])]
    assert "classifier.weight" in moved
    assert len(moved) == len([k for k in after if k not in frozen])  # every conv weight trained
    assert model.training and all(not m.training for m in batchnorm.batchnorms(model))
    bn_parameters = {id(p) for m in batchnorm.batchnorms(model) for p in m.parameters()}
    assert bn_parameters and not bn_parameters & optimized(trainer)


def test_freeze_backbone_trains_the_head_only(cfg_train, tmp_path):
    trainer, before = run_trainer(cfg_train(**{"train.freeze_backbone": True, "train.iters": 2,
                                               "train.eval_every": 1}), tmp_path / "run")
    model = unwrap(trainer.model)
    after = model.state_dict()
    backbone = [key for key in after if key.startswith("backbone.")]
    head = [key for key in after if not key.startswith("backbone.")]
    assert backbone and head
    for key in backbone:
        assert torch.equal(before[key], after[key]), key
    head_stats = [key for key in bn_names(model) if not key.startswith("backbone.")]
    assert head_stats  # the head's BatchNorms keep training: statistics and affine parameters move
    for key in head:
        if not key.endswith("num_batches_tracked"):
            assert not torch.equal(before[key], after[key]), key
    assert {group["name"] for group in trainer.optimizer.param_groups} == {"head", "head_no_decay"}
    assert not {id(p) for p in model.backbone.parameters()} & optimized(trainer)


def test_bn_momentum_reaches_every_batchnorm_also_after_sync_conversion():
    model = build_model("resnet18", num_classes=3)
    count = len(batchnorm.batchnorms(model))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    batchnorm.configure(synced, momentum=0.0003)
    layers = batchnorm.batchnorms(synced)
    assert len(layers) == count and all(isinstance(m, nn.SyncBatchNorm) for m in layers)
    assert {m.momentum for m in layers} == {0.0003}


def test_bn_momentum_zero_keeps_statistics_in_training(cfg_train, tmp_path):
    """torch's momentum weighs the new batch: 0 leaves the running statistics while BatchNorm still trains."""
    trainer, before = run_trainer(cfg_train(**{"model.bn_momentum": 0.0, "train.iters": 2}), tmp_path / "run")
    model = unwrap(trainer.model)
    after = model.state_dict()
    stats = [k for k in bn_names(model) if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    affine = [k for k in bn_names(model) if k.endswith(".weight")]
    assert any(not torch.equal(before[k], after[k]) for k in affine)
    assert all(after[k.replace("running_mean", "num_batches_tracked")] == 2 for k in stats if "mean" in k)


def _equivalence_config(cfg_train, **extra):
    """Every pixel labelled (no ignore band, no padding: crops of the whole image), no dropout, BatchNorm frozen:
    the loss of a batch of 4 is then the mean of the losses of its two halves."""
    return cfg_train(**{"dataset.border": 0, "dataset.image_size": 32, "train.crop_size": 32,
                        "train.scale_range": "[1.0,1.0]", "model.dropout": 0.0, "train.freeze_bn": True,
                        "train.amp": "off", "train.iters": 3, "train.eval_every": 0, "train.lr": 0.05,
                        "train.log_every": 1, **extra})


def test_accumulate_two_batches_of_two_equals_a_batch_of_four(cfg_train, tmp_path):
    whole = train(_equivalence_config(cfg_train, **{"train.batch_size": 4}), tmp_path / "whole")
    accumulated = train(_equivalence_config(cfg_train, **{"train.batch_size": 2, "train.accumulate": 2}),
                        tmp_path / "accumulated")
    train(_equivalence_config(cfg_train, **{"train.batch_size": 2}), tmp_path / "halves")
    a, b, c = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")
               for run in ("whole", "accumulated", "halves"))
    assert a["iteration"] == b["iteration"] == 3  # train.iters counts optimizer steps
    assert b["sampler"]["consumed"] == a["sampler"]["consumed"] == 12
    # Tolerance: float32 sums in another order (a batch of 4 against two of 2), 3 steps: 1e-5 relative.
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert any(not torch.allclose(c["model"][k], v, rtol=1e-3, atol=1e-5) for k, v in a["model"].items())
    for (i, loss_a), (j, loss_b) in zip(whole["losses"], accumulated["losses"]):
        assert i == j and loss_b == pytest.approx(loss_a, rel=1e-5)
    assert b["scheduler"]["last_epoch"] == 3  # one schedule step per optimizer step
    log = (tmp_path / "accumulated" / "train.log").read_text()
    assert "effective batch 4 = train.accumulate 2 x 2 per process x 1 processes" in log


@pytest.mark.parametrize("extra", [{"train.freeze_bn": True, "train.accumulate": 2, "train.eval_every": 1},
                                   {"train.freeze_backbone": True, "train.accumulate": 3}],
                         ids=["freeze_bn+accumulate", "freeze_backbone+accumulate"])
def test_resume_is_exact(cfg_train, tmp_path, extra):
    overrides = {"train.iters": 4, "train.eval_every": 0, "train.ckpt_every": 2, **extra}
    straight = train(cfg_train(**overrides), tmp_path / "straight")
    train(cfg_train(**overrides, **{"train.stop_at": 2}), tmp_path / "resumed")
    resumed = train(cfg_train(**overrides, resume=str(tmp_path / "resumed" / "checkpoints" / "last.pt")),
                    tmp_path / "resumed")
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("straight", "resumed"))
    assert a["iteration"] == b["iteration"] == 4 and a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert straight["losses"][2:] == resumed["losses"]


def test_resume_refuses_another_frozen_part(cfg_train, tmp_path):
    train(cfg_train(), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"train.freeze_bn was False in that run and is True now") as raised:
        train(cfg_train(**{"train.freeze_bn": True}, resume=str(tmp_path / "run" / "checkpoints" / "last.pt")),
              tmp_path / "run2")
    assert "model.weights=" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("key, value, message", [
    ("train.accumulate", 0, "train.accumulate must be an integer > 0"),
    ("model.bn_momentum", 1.5, "model.bn_momentum must be null"),
])
def test_bad_values_are_one_line(cfg_train, key, value, message):
    with pytest.raises(ValueError, match=message):
        validate_train(cfg_train(**{key: value}))


def test_accumulation_reduces_gradients_once_per_update():
    """DDP reduces on the last micro-batch only (``no_sync`` before): as many reductions as without accumulation."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from seg.engine.step import TrainStep

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        reductions = []

        def count(state, bucket):
            reductions.append(1)
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        def batches():
            while True:
                yield torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), torch.zeros(2, 8, 8, dtype=torch.uint8)

        counts = []
        for accumulate in (1, 3):
            model = DistributedDataParallel(nn.Conv2d(3, 2, 1))
            model.register_comm_hook(None, count)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)  # as build_optimizer's
            step = TrainStep(model, optimizer, lambda out, labels: out.square().mean(), torch.device("cpu"),
                             accumulate=accumulate)
            stream = batches()
            reductions.clear()
            step(*next(stream), stream)
            counts.append(len(reductions))
        assert counts[0] >= 1 and counts == [counts[0]] * 2
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over loopback")
def test_ddp_accumulation_with_a_frozen_backbone(tmp_path, cfg_train):
    """Two processes with accumulate=2 and a frozen backbone (DDP needs no find_unused_parameters for it): the
    backbone ends as it started, which is where a one-process run with a frozen backbone ends (rank 0 seeds the
    model as one process does, and DDP gives every rank rank 0's weights)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
                "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0"]
    overrides = {"train.freeze_backbone": True, "train.accumulate": 2, "train.iters": 2, "train.eval_every": 0}
    run_script("train.py", [*tiny_overrides(tmp_path / "data", **overrides), f"hydra.run.dir={tmp_path / 'ddp'}"],
               launcher=launcher)
    train(cfg_train(**overrides), tmp_path / "one")
    ddp, one = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("ddp", "one"))
    assert ddp["iteration"] == 2 and ddp["sampler"]["consumed"] == 2 * 2  # per rank: 1 image x 2 micro-batches x 2
    for key, value in one["model"].items():
        if key.startswith("backbone."):
            assert torch.equal(ddp["model"][key], value), key
    assert not torch.equal(ddp["model"]["classifier.weight"], one["model"]["classifier.weight"])  # other data
    assert "effective batch 4 = train.accumulate 2 x 1 per process x 2 processes" in \
        (tmp_path / "ddp" / "train.log").read_text()


def test_accumulation_under_a_grad_scaler_updates_once():
    """fp16's GradScaler: every micro-batch's loss scaled, one unscale/step/update per optimizer step, and the update
    equals the unscaled one (a power-of-two scale is exact)."""
    from seg.engine.step import TrainStep

    calls = []

    class Counting(torch.amp.GradScaler):
        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def step(self, optimizer, *args, **kwargs):
            calls.append("step")
            return super().step(optimizer, *args, **kwargs)

        def update(self, new_scale=None):
            calls.append("update")
            return super().update(new_scale)

    generator = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8, generator=generator),
             torch.zeros(2, 8, 8, dtype=torch.uint8)) for _ in range(4)]
    weights = []
    for scaler in (None, Counting("cpu", init_scale=2.0 ** 12)):
        torch.manual_seed(0)
        model = nn.Conv2d(3, 2, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
        step = TrainStep(model, optimizer, lambda out, labels: out.square().mean(), torch.device("cpu"),
                         scaler=scaler, accumulate=2)
        stream = iter(data)
        for _ in range(2):
            step(*next(stream), stream)
        weights.append(model.weight.detach().clone())
    assert calls == ["scale", "scale", "step", "update"] * 2
    torch.manual_seed(0)
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], nn.Conv2d(3, 2, 1).weight)  # trained


def test_voc_paper_stage2_is_the_papers_second_stage(data_root):
    cfg = compose_config("train", ["experiment=voc_paper_stage2", "dataset.root=/data/voc", "model.weights=s1.pt"])
    stage1 = compose_config("train", ["experiment=voc_paper", "dataset.root=/data/voc"])
    assert (cfg["os"], stage1["os"]) == (8, 16)
    assert cfg["dataset"]["name"] == "voc" and cfg["dataset"]["split"] == "trainval"  # the official 2,913 images
    assert cfg["train"]["lr"] == 0.001 and stage1["train"]["lr"] == 0.007
    assert cfg["train"]["freeze_bn"] is True and not stage1["train"]["freeze_bn"]
    for key in ("iters", "batch_size", "crop_size"):
        assert cfg["train"][key] == stage1["train"][key]  # 30k iterations, batch 16, crop 513 in both stages
    assert cfg["backbone"]["name"] == stage1["backbone"]["name"] == "resnet101"
    assert cfg["model"]["multi_grid"] == stage1["model"]["multi_grid"] == [1, 2, 4]
    assert cfg["backbone"]["pretrained"] == "none"  # no ImageNet download: stage 1's weights replace them


def test_voc_paper_stage2_without_weights_is_one_line(tmp_path):
    cfg = compose_config("train", ["experiment=voc_paper_stage2", f"dataset.root={tmp_path}"])
    with pytest.raises(ConfigError, match="^model.weights must be set on the command line: stage 1's checkpoint") \
            as raised:
        train(cfg, tmp_path / "run")
    assert "\n" not in str(raised.value) and not (tmp_path / "run").exists()  # before any work


def test_stage2_starts_from_stage1_with_its_batchnorm_frozen(cfg_train, tmp_path):
    """Stage 1 (BatchNorm trained, OS16) then experiment=voc_paper_stage2 on the tiny data: stage 2 starts from
    stage 1's best.pt and keeps its BatchNorm statistics and affine parameters."""
    train(cfg_train(**{"train.iters": 2}), tmp_path / "stage1")
    best = tmp_path / "stage1" / "checkpoints" / "best.pt"
    stage2 = cfg_train(**{"experiment": "voc_paper_stage2", "dataset": "synthetic", "dataset.split": "train",
                          "model.weights": str(best), "train.iters": 2})
    assert stage2["os"] == 8 and stage2["train"]["freeze_bn"] and stage2["train"]["lr"] == 0.001
    train(stage2, tmp_path / "stage2")
    first, second = (load_checkpoint(path)["model"] for path in (best, tmp_path / "stage2" / "checkpoints" / "last.pt"))
    model = build_model("resnet18", num_classes=6)
    names = sorted(bn_names(model))
    assert names and all(torch.equal(first[key], second[key]) for key in names)
    assert not torch.equal(first["classifier.weight"], second["classifier.weight"])


@pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals")
def test_signals_and_timed_checkpoints_fall_between_optimizer_steps(cfg_train, tmp_path, monkeypatch):
    """With accumulate=2, a SIGUSR1 in the middle of an optimizer step and the time-based checkpoint both act after
    the step's last micro-batch: the checkpoint's data position is a whole number of steps, and the resume reaches
    the uninterrupted run's weights."""
    import os
    import signal

    from seg.engine import trainer as trainer_module
    from seg.engine.step import TrainStep
    from seg.errors import Interrupted

    overrides = {"train.iters": 4, "train.eval_every": 0, "train.ckpt_every": 0, "train.accumulate": 2}
    saved = []
    real_save = trainer_module.save_checkpoint

    def recording(path, **kwargs):
        if path.name == "last.pt":  # best.pt follows the evaluation at the end
            saved.append((kwargs["iteration"], kwargs["sampler_position"]["consumed"]))
        real_save(path, **kwargs)

    monkeypatch.setattr(trainer_module, "save_checkpoint", recording)
    straight = train(cfg_train(**overrides, **{"train.ckpt_every_min": 0.0001}), tmp_path / "straight")
    assert saved == [(i, i * 2 * 2) for i in (1, 2, 3, 4)]  # after every step (6 ms), never between micro-batches

    calls = {"n": 0}
    real_backward = TrainStep._backward

    def signalling(self, images, labels):
        calls["n"] += 1
        if calls["n"] == 3:  # the first micro-batch of iteration 2
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_backward(self, images, labels)

    monkeypatch.setattr(TrainStep, "_backward", signalling)
    with pytest.raises(Interrupted):
        train(cfg_train(**overrides), tmp_path / "run")
    monkeypatch.setattr(TrainStep, "_backward", real_backward)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert calls["n"] == 4 and state["iteration"] == 2 and state["sampler"]["consumed"] == 2 * 2 * 2
    resumed = train(cfg_train(**overrides, resume=str(last)), tmp_path / "run")
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["model"] for run in ("straight", "run"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert straight["losses"][2:] == resumed["losses"]
