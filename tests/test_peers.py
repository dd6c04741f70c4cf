"""Other projects' weights files: recognised from their contents, built as the peer's architecture, logits equal.

The peers' models come from their own code where it installs (torchvision) and otherwise from a re-write of
their source (tests/vainf_reference.py); weights are random, with random BatchNorm statistics, saved the way the
peer's code saves them.
"""

import numpy as np
import pytest
import torch
from helpers import compose_config, tiny_overrides
from mmseg_reference import EncoderDecoder
from torch import nn
from torchvision.models.segmentation import (
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
    lraspp_mobilenet_v3_large,
)
from vainf_reference import vainf_model

from seg.config import model_kwargs
from seg.engine.checkpoint import CheckpointError, load_trained
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.trainer import train
from seg.export import export_checkpoint
from seg.models import build_model, load_weights, model_from_file
from seg.models.layouts import recognise
from seg.models.weights import WeightsError


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics (a trained model's are far from the 0/1 initialisation)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Within 1e-4 of the largest logit magnitude (the issue's parity criterion)."""
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


def vainf_main_checkpoint(model: nn.Module, path, iteration: int = 30000):
    """What VainF's main.py save_ckpt writes: its best_score is StreamSegMetrics' numpy float."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    torch.save({"cur_itrs": iteration, "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                "scheduler_state": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
                "best_score": np.float64(0.7713)}, path)


@pytest.mark.parametrize("head", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_vainf_state_dict_logits(tmp_path, head, output_stride):
    theirs = randomised(vainf_model(head, "resnet50", 5, output_stride))
    path = tmp_path / f"best_{head}_resnet50_voc_os{output_stride}.pth"
    torch.save(theirs.state_dict(), path)
    # VainF's files do not record the output stride: 16 (its main.py default) unless os= says otherwise
    ours, report = model_from_file(path, output_stride=None if output_stride == 16 else output_stride)
    assert report.layout == f"VainF DeepLabV3{'+' if head == 'deeplabv3plus' else ''} ResNet-50 (state dict)"
    assert len(report.loaded) == len(ours.state_dict())
    x = torch.randn(2, 3, 65, 57)
    with torch.no_grad():
        assert_same_logits(ours(x)["out"], theirs(x))


def test_vainf_main_py_checkpoint(tmp_path):
    theirs = randomised(vainf_model("deeplabv3plus", "resnet50", 3, 16), seed=1)
    path = tmp_path / "best_deeplabv3plus_resnet50_voc_os16.pth"
    vainf_main_checkpoint(theirs, path)
    ours, report = model_from_file(path)
    assert report.layout == "VainF DeepLabV3+ ResNet-50 (main.py checkpoint)"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_same_logits(ours(x)["out"], theirs(x))


def test_a_stride_the_file_does_not_record_is_said(tmp_path, caplog):
    """VainF's files do not record the output stride they were trained at (os= must say it); torchvision's models
    exist at one stride only, so nothing is said of theirs."""
    vainf, tv = tmp_path / "vainf.pth", tmp_path / "tv.pth"
    torch.save(vainf_model("deeplabv3", "resnet50", 3, 8).state_dict(), vainf)
    torch.save(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3).state_dict(), tv)
    with caplog.at_level("INFO", logger="seg.engine.checkpoint"):
        assert load_trained(vainf)["config"]["os"] == 16
        assert "output stride 16 is its project's default, which the file does not record" in caplog.text
        caplog.clear()
        load_trained(tv)
        assert "is a torchvision deeplabv3_resnet50 file" in caplog.text and "output stride" not in caplog.text


@pytest.mark.parametrize("builder", [deeplabv3_resnet50, deeplabv3_resnet101])
def test_torchvision_file_logits(tmp_path, builder):
    theirs = randomised(builder(weights=None, weights_backbone=None, num_classes=4, aux_loss=True))
    path = tmp_path / f"{builder.__name__}.pth"
    torch.save(theirs.state_dict(), path)
    ours, report = model_from_file(path)
    assert report.layout == f"torchvision {builder.__name__} (with aux_classifier)"
    x = torch.randn(1, 3, 61, 67)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert_same_logits(a["out"], b["out"])
    assert_same_logits(a["aux"], b["aux"])


def test_half_loads_are_errors(tmp_path):
    """The issue's case: a VainF v3+ file into the default DeepLabV3 loaded the backbone and dropped the head."""
    path = tmp_path / "vainf.pth"
    torch.save(vainf_model("deeplabv3plus", "resnet50", 21, 16).state_dict(), path)
    with pytest.raises(WeightsError) as raised:
        load_weights(build_model("resnet50", 21), path)
    message = str(raised.value)
    assert "VainF DeepLabV3+ ResNet-50 (state dict)" in message and "this model's decoder" in message
    assert "train with model=vainf_deeplabv3plus_resnet50 (it sets backbone.name=resnet50 os=16 " in message
    assert "model.head=deeplabv3plus model.decoder_convs=1" in message and "model.contract_dilation=true" in message
    # the architecture the message names takes the whole file
    report = load_weights(build_model("resnet50", 21, head="deeplabv3plus", decoder_convs=1, multi_grid=None,
                                      contract_dilation=True), path)
    assert not report.missing and not report.unexpected
    # fine-tuning on another class count re-initialises the classifier only, and says so
    report = load_weights(build_model("resnet50", 5, head="deeplabv3plus", decoder_convs=1), path)
    assert report.missing == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("maker", [
    *[lambda head=head, depth=depth: vainf_model(head, f"resnet{depth}", 21, 16)
      for head in ("deeplabv3", "deeplabv3plus") for depth in (50, 101)],
    *[lambda head=head: vainf_model(head, "mobilenet", 21, 16) for head in ("deeplabv3", "deeplabv3plus")],
    lambda: deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True),
    lambda: deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=True),
    lambda: deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21, aux_loss=True),
    lambda: lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21),
    *[lambda plus=plus, depth=depth: EncoderDecoder(depth, 21, plus=plus, aux=True)
      for plus in (False, True) for depth in (50, 101)]])
def test_each_layout_has_a_preset_that_builds_it(maker):
    """The preset a load error names composes to exactly the architecture the file needs."""
    record = recognise(maker().state_dict())
    cfg = compose_config("train", [f"model={record.preset}"])
    assert model_kwargs(cfg, record.arguments["num_classes"], "none") == {
        **model_kwargs(cfg, 0, "none"), **record.arguments, "pretrained": "none"}


def test_unknown_tensor_dict_is_one_line(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.stem.weight": torch.zeros(3), "head.weight": torch.zeros(2)}, path)
    with pytest.raises(WeightsError, match=r"other.pth is a state dict of 2 tensors .*not a checkpoint of this "):
        model_from_file(path)
    with pytest.raises(CheckpointError, match="nor a file of another project this one reads"):
        load_trained(path)


def test_evaluate_and_export_a_vainf_file(tmp_path, data_root):
    """evaluate.py and export.py take a peer's file as they take ours (the synthetic dataset has 6 classes)."""
    theirs = randomised(vainf_model("deeplabv3", "resnet50", 6, 16))
    path = tmp_path / "vainf.pth"
    torch.save(theirs.state_dict(), path)
    with pytest.raises(Exception, match="records no dataset: name the one to evaluate on"):
        evaluate_checkpoint(compose_config("evaluate", [f"ckpt={path}", "device=cpu"]), tmp_path / "eval")
    assert_evaluates_and_exports(path, theirs, tmp_path, data_root)


def assert_evaluates_and_exports(path, theirs: nn.Module, tmp_path, data_root) -> None:
    """evaluate.py on the synthetic dataset (6 classes) runs on the peer's file ``path``, and export.py's TorchScript
    file gives the peer model's logits (``theirs``: normalised image -> logits) on a [0, 1] image."""
    metrics = evaluate_checkpoint(compose_config("evaluate", [
        f"ckpt={path}", "device=cpu", "dataset=synthetic", f"dataset.root={data_root}", "dataset.image_size=64",
        "dataset.num_val=2", "num_workers=0"]), tmp_path / "eval")
    assert metrics["num_images"] == 2 and set(metrics["per_class_iou"]) >= {"background"}
    exported = tmp_path / "exported.ts"
    export_checkpoint(compose_config("export", [f"ckpt={path}", f"output={exported}"]))
    scripted = torch.jit.load(str(exported))
    image = torch.rand(1, 3, 64, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert_same_logits(scripted(image), theirs((image - mean) / std))


def test_preset_fine_tunes_from_a_vainf_file(tmp_path, data_root):
    """model=<peer preset> builds the peer's architecture, model.weights=<their file> fills all of it (a new
    classifier for the dataset's 6 classes); the run's checkpoint then evaluates like any other."""
    path = tmp_path / "best_deeplabv3plus_resnet50_voc_os16.pth"
    torch.save(randomised(vainf_model("deeplabv3plus", "resnet50", 21, 16)).state_dict(), path)
    cfg = compose_config("train", tiny_overrides(data_root, **{
        "model": "vainf_deeplabv3plus_resnet50", "model.weights": path, "train.iters": 1, "train.eval_every": 0,
        "train.ckpt_every": 1}))
    assert (cfg["backbone"]["name"], cfg["os"], cfg["model"]["decoder_convs"]) == ("resnet50", 16, 1)
    train(cfg, tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert trained["config"]["model"]["contract_dilation"] is True
    ours, report = model_from_file(tmp_path / "run" / "checkpoints" / "last.pt")
    assert report.layout.startswith("seg checkpoint") and ours.decoder.fuse[0][0].in_channels == 256 + 48
