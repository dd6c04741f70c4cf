"""train.ema_decay: the EMA of the weights against its formula, beside the model at every evaluation, best.pt by
its mIoU, exact on resume, and the weights evaluate / predict / export choose (weights=auto|ema|raw)."""

import json
import logging

import pytest
import torch
from helpers import compose_config, tiny_overrides

from seg.config import ConfigError, validate_export, validate_inference
from seg.engine import trainer as trainer_module
from seg.engine.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, restore
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import load_model
from seg.engine.step import TrainStep
from seg.engine.trainer import train
from seg.export import export_checkpoint
from seg.io import load_torchscript

DECAY = 0.6


@pytest.fixture(scope="module")
def ema_run(data_root, tmp_path_factory):
    """Three iterations with an evaluation after each; the model's state after every optimizer step recorded."""
    run = tmp_path_factory.mktemp("ema_run")
    steps = []

    class Recording(TrainStep):
        def __call__(self, *batch):
            result = super().__call__(*batch)
            steps.append({key: value.detach().clone() for key, value in self.model.state_dict().items()})
            return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "TrainStep", Recording)
        train(compose_config("train", tiny_overrides(data_root, **{
            "train.iters": 3, "train.eval_every": 1, "train.ckpt_every": 3, "train.ema_decay": DECAY})), run)
    return run, steps


def test_ema_follows_its_formula(ema_run):
    run, steps = ema_run
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["ema_updates"] == 3 and len(steps) == 3
    expected = {key: value.double() for key, value in steps[0].items()}  # the first update copies the model
    for step in steps[1:]:
        expected = {key: DECAY * expected[key] + (1 - DECAY) * step[key].double() for key in expected}
    assert state["ema"].keys() == state["model"].keys()
    for key, value in state["ema"].items():
        if value.is_floating_point():  # BatchNorm's running statistics included (use_buffers=True)
            torch.testing.assert_close(value.double(), expected[key], rtol=1e-5, atol=1e-6, msg=key)
    moved = [key for key, value in state["ema"].items() if value.is_floating_point()
             and not torch.equal(value, state["model"][key])]
    assert len(moved) > len(state["ema"]) // 2  # the EMA is not the model


def test_ema_is_evaluated_beside_the_model_and_chooses_best(ema_run):
    run, _ = ema_run
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3]
    for record in records:
        assert set(record["ema_per_class_iou"]) == set(record["per_class_iou"])
        assert 0 <= record["ema_mIoU"] <= 1 and record["ema_num_images"] == record["num_images"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    scores = [r["ema_mIoU"] for r in records]
    assert best["iteration"] == records[scores.index(max(scores))]["iter"]
    assert best["best_miou"] == pytest.approx(max(scores))
    log = (run / "train.log").read_text()
    assert log.count("val (EMA) iter") == 3 and log.count("val iter") == 3


@pytest.mark.parametrize("weights, key", [("auto", "ema_mIoU"), ("raw", "mIoU")])
def test_evaluate_uses_the_ema_unless_told(ema_run, cfg_eval, tmp_path, caplog, weights, key):
    run, _ = ema_run
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])  # evaluated with last.pt's weights
    with caplog.at_level(logging.INFO, logger="seg.engine.checkpoint"):
        metrics = evaluate_checkpoint(cfg_eval(run / "checkpoints" / "last.pt", f"weights={weights}"), tmp_path)
    assert metrics["mIoU"] == pytest.approx(last[key], abs=1e-9)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("weights:")]
    assert len(lines) == 1
    assert ("the EMA of the weights" if weights == "auto" else "weights=raw; it also holds an EMA") in lines[0]


def test_predict_and_export_choose_the_ema(ema_run, tmp_path):
    run, _ = ema_run
    ckpt = run / "checkpoints" / "last.pt"
    state = load_checkpoint(ckpt)
    for weights, key in (("auto", "ema"), ("ema", "ema"), ("raw", "model")):
        model = load_model(ckpt, None, torch.device("cpu"), weights=weights).model
        assert all(torch.equal(value, state[key][name]) for name, value in model.state_dict().items()), weights
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={tmp_path / 'model.ts'}",
                                                "check.sizes=[[64,64]]"]))
    exported, metadata = load_torchscript(tmp_path / "model.ts")
    assert metadata["weights"] == "ema"
    images = torch.rand(1, 3, 64, 64)
    ema_model = model_from_checkpoint({**state, "model": state["ema"]})
    raw_model = model_from_checkpoint(state)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet's, inside the exported module
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = exported(images)
        ema_out, raw_out = (m((images - mean) / std)["out"] for m in (ema_model, raw_model))
    torch.testing.assert_close(out, ema_out, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, raw_out, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="weights=raw cannot choose an exported model's weights"):
        load_model(tmp_path / "model.ts", None, torch.device("cpu"), weights="raw")


def test_weights_ema_needs_an_ema(tmp_path, data_root):
    from helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "plain.pt", data_root)
    with pytest.raises(CheckpointError, match=r"weights=ema: .* holds no EMA of the weights"):
        restore(ckpt, weights="ema")
    model, state = restore(ckpt)  # auto: the trained weights
    assert state["weights"] == "raw"
    for config, validate in (("evaluate", validate_inference), ("export", validate_export)):
        cfg = compose_config(config, [f"ckpt={ckpt}", "output=x.ts", "weights=best"] if config == "export"
                             else [f"ckpt={ckpt}", "weights=best"])
        with pytest.raises(ConfigError, match=r"weights must be one of \['auto', 'ema', 'raw'\], got 'best'"):
            validate(cfg)


def test_ema_resume_is_exact(cfg_train, tmp_path):
    overrides = {"train.iters": 4, "train.eval_every": 0, "train.ckpt_every": 2, "train.ema_decay": 0.7}
    train(cfg_train(**overrides), tmp_path / "straight")
    train(cfg_train(**overrides, **{"train.stop_at": 2}), tmp_path / "resumed")
    train(cfg_train(**overrides, resume=tmp_path / "resumed" / "checkpoints" / "last.pt"), tmp_path / "resumed")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 4 and a["ema_updates"] == b["ema_updates"] == 4
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
