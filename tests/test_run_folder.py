"""A run folder as ckpt= (its best.pt, else last.pt) and resume= (its last.pt); a folder that is not a run folder."""

import json

import numpy as np
import pytest
from helpers import compose_config, tiny_checkpoint
from PIL import Image

from seg import export as export_module
from seg.engine import predict as predict_module
from seg.engine.checkpoint import CheckpointError, checkpoint_in, load_checkpoint
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.trainer import train


def test_checkpoint_in_picks_best_for_models_and_last_for_resume(tmp_path, data_root, caplog):
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt"):
        tiny_checkpoint(run / "checkpoints" / name, data_root)
    caplog.set_level("INFO")
    assert checkpoint_in(run) == run / "checkpoints" / "best.pt"
    assert f"ckpt={run} is a run folder: using {run / 'checkpoints' / 'best.pt'}" in caplog.text
    assert checkpoint_in(run, resume=True) == run / "checkpoints" / "last.pt"
    assert checkpoint_in(run / "checkpoints") == run / "checkpoints" / "best.pt"
    assert checkpoint_in(run / "checkpoints" / "last.pt") == run / "checkpoints" / "last.pt"  # a file: itself
    (run / "checkpoints" / "best.pt").unlink()
    assert checkpoint_in(run) == run / "checkpoints" / "last.pt"  # no best (no evaluation yet): last


def test_a_folder_that_is_no_run_folder_is_one_line(tmp_path):
    plain = tmp_path / "photos"
    plain.mkdir()
    with pytest.raises(CheckpointError, match=r"is a folder but not a run folder \(no checkpoints/best.pt or "
                                              r"checkpoints/last.pt\) nor an smp save_pretrained folder") as raised:
        checkpoint_in(plain)
    assert "not found" not in str(raised.value) and "\n" not in str(raised.value)
    started = tmp_path / "early"
    started.mkdir()
    (started / "train.log").write_text("")
    with pytest.raises(CheckpointError, match=r"is a run folder without checkpoints/last.pt \(the run stopped"):
        checkpoint_in(started, resume=True)


def test_commands_take_a_run_folder(tmp_path, cfg_train, cfg_eval, monkeypatch, caplog):
    run = tmp_path / "run"
    train(cfg_train(**{"train.iters": 2, "train.eval_every": 1}), run)  # best.pt at 1 or 2, last.pt at 2
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    caplog.set_level("INFO")

    metrics = evaluate_checkpoint(cfg_eval(run), tmp_path / "eval")
    by_file = evaluate_checkpoint(cfg_eval(run / "checkpoints" / "best.pt"), tmp_path / "eval_file")
    assert metrics == by_file
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics["mIoU"] == max(record["mIoU"] for record in logged) == best["best_miou"]

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(images / "a.png")
    seen = []
    real_load = predict_module.load_model
    monkeypatch.setattr(predict_module, "load_model", lambda path, *args: seen.append(path) or real_load(path, *args))
    predict_module.predict(compose_config("predict", [f"ckpt={run}", f"input={images}",
                                                      f"output={tmp_path / 'predictions'}", "device=cpu"]))
    assert seen == [run / "checkpoints" / "best.pt"] and (tmp_path / "predictions" / "labels" / "a.png").is_file()

    class Stop(Exception):
        pass

    def load_trained(path, *args):  # weights
        seen.append(path)
        raise Stop

    monkeypatch.setattr(export_module, "load_trained", load_trained)
    with pytest.raises(Stop):
        export_module.export_checkpoint(compose_config("export", [f"ckpt={run}", f"output={tmp_path / 'm.ts'}"]))
    assert seen[-1] == str(run / "checkpoints" / "best.pt")

    summary = train(cfg_train(resume=str(run), **{"train.iters": 3, "train.eval_every": 0}), run)
    assert summary["iteration"] == 3 and load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 3
    assert f"resume={run} is a run folder: using {run / 'checkpoints' / 'last.pt'}" in caplog.text
