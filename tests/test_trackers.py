"""logger=mlflow / wandb / [mlflow,wandb]: what a run leaves in MLflow's store (read back with MLflow's client) and
in the offline W&B run directory (its records read back), a resume continuing the same tracked run, and a tracker
that cannot start or fails later costing one warning, never the run."""

import json
import logging
import struct
import sys

import pytest
import yaml
from helpers import losses_from_log, needed

from seg.config import ConfigError, validate_train
from seg.engine.checkpoint import load_checkpoint
from seg.engine.trackers import Trackers
from seg.engine.trainer import train


def wandb_records(path):
    """The protobuf records of a ``run-<id>.wandb`` file: W&B's header (``:W&B``, magic, version: 7 bytes), then
    LevelDB's log format (32 KiB blocks of chunks, each with a 7-byte header: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(run_dir):
    """``{step: {key: value}}`` of every offline W&B run under ``run_dir/wandb``, and the runs' records."""
    history, records = {}, []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            records.append(record)
            if record.WhichOneof("record_type") == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                history.setdefault(items.pop("_step"), {}).update(items)
    return history, records


def same_series(got, expected) -> bool:
    """Equal steps, and values equal to float precision."""
    return [step for step, _ in got] == [step for step, _ in expected] and \
        [value for _, value in got] == pytest.approx([value for _, value in expected])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No W&B key anywhere (so offline), and MLflow's default store in a fresh working directory."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from wandb login
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)


def test_mlflow_and_wandb_record_the_run_and_its_resume(cfg_train, tmp_path, offline):
    mlflow = needed("mlflow")
    needed("wandb")
    run = tmp_path / "run"
    overrides = {"logger": "[mlflow,wandb]", "train.iters": 4, "train.eval_every": 2, "train.ckpt_every": 2,
                 "mlflow.log_checkpoint": True, "wandb.log_checkpoint": True}
    train(cfg_train(**overrides, **{"train.stop_at": 2}), run)
    summary = train(cfg_train(**overrides, resume=run / "checkpoints" / "last.pt"), run)
    losses = losses_from_log(run / "train.log")
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    evaluations = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    config = state["config"]

    # MLflow's default store, from a fresh working directory: one run, continued by the resume
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("seg")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == state["trackers"]["mlflow"]
    run_id = runs[0].info.run_id
    assert runs[0].info.status == "FINISHED"
    params = runs[0].data.params
    assert params["train.lr"] == str(config["train"]["lr"]) and params["backbone.name"] == "resnet18"
    assert same_series([(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")], losses)
    for name, key in (("val/mIoU", "mIoU"), ("val/pixel_acc", "pixel_acc")):
        assert same_series([(m.step, m.value) for m in client.get_metric_history(run_id, name)],
                           [(e["iter"], e[key]) for e in evaluations])
    for name, iou in evaluations[-1]["per_class_iou"].items():
        assert client.get_metric_history(run_id, f"val/IoU/{name}")[-1].value == pytest.approx(iou)
    assert len(client.get_metric_history(run_id, "train/lr")) == 4
    folder = client.download_artifacts(run_id, "", str(tmp_path / "artifacts"))
    assert yaml.safe_load(open(f"{folder}/config.yaml")) == config
    assert open(f"{folder}/checkpoints/best.pt", "rb").read() == (run / "checkpoints" / "best.pt").read_bytes()

    # W&B, offline: the first run and its resume (same id) hold every step
    history, records = wandb_history(run)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert {r.run_id for r in runs} == {state["trackers"]["wandb"]} and len(runs) == 2
    wandb_config = {item.key: json.loads(item.value_json) for item in runs[0].config.update}
    assert wandb_config["train"]["lr"] == config["train"]["lr"]
    assert sorted(history) == [1, 2, 3, 4]
    assert same_series([(step, history[step]["train/loss"]) for step in sorted(history)], losses)
    assert same_series([(e["iter"], history[e["iter"]]["val/mIoU"]) for e in evaluations],
                       [(e["iter"], e["mIoU"]) for e in evaluations])
    for name, iou in evaluations[-1]["per_class_iou"].items():
        assert history[4][f"val/IoU/{name}"] == pytest.approx(iou)
    assert [r.artifact.type for r in records if r.WhichOneof("record_type") == "artifact"] == ["model"]
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1, 0]  # paused, done
    assert summary["iteration"] == 4


def test_unreachable_tracker_and_missing_package_are_one_warning_each(cfg_train, tmp_path, offline, caplog,
                                                                      monkeypatch):
    needed("mlflow")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it raises ImportError
    with caplog.at_level(logging.WARNING):
        summary = train(cfg_train(**{"logger": "[mlflow,wandb]", "mlflow.tracking_uri": "http://127.0.0.1:9"}),
                        tmp_path / "run")
    assert summary["iteration"] == 2 and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name == "seg.engine.trackers"]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("logger=mlflow: cannot start (") and "127.0.0.1:9" in warnings[0]
    assert warnings[1] == ('logger=wandb: the wandb package is not installed (pip install -e ".[wandb]"); the run '
                           'goes on without it')
    assert all("\n" not in w for w in warnings)
    assert sum("logger=" in line for line in (tmp_path / "run" / "train.log").read_text().splitlines()) == 2


def test_a_tracker_that_fails_later_is_dropped_after_one_warning(caplog):
    class Flaky:
        name, run_id, log_checkpoint, calls = "mlflow", "r1", False, 0

        def scalars(self, values, step):
            self.calls += 1
            raise ConnectionError("server went away")

    class Steady:
        name, run_id, log_checkpoint = "wandb", "r2", False

        def __init__(self):
            self.logged, self.closed = [], None

        def scalars(self, values, step):
            self.logged.append((step, dict(values)))

        def close(self, finished):
            self.closed = finished

    flaky, steady = Flaky(), Steady()
    trackers = Trackers([flaky, steady])
    with caplog.at_level(logging.WARNING):
        for step in (1, 2, 3):
            trackers.scalars({"train/loss": 1.0 / step}, step)
    assert flaky.calls == 1 and [step for step, _ in steady.logged] == [1, 2, 3]
    assert [r.getMessage() for r in caplog.records] == [
        "logger=mlflow: could not log (ConnectionError: server went away); the run goes on without mlflow"]
    assert trackers.run_ids() == {"wandb": "r2"}
    trackers.close(True)
    assert steady.closed is True


@pytest.mark.parametrize("overrides, message", [
    ({"logger": "neptune"}, "logger must be one of ['tensorboard', 'mlflow', 'wandb'], got 'neptune'"),
    ({"logger": "[mlflow,comet]"}, "logger must be one of ['tensorboard', 'mlflow', 'wandb'], got 'comet'"),
    ({"wandb.mode": "sometimes"}, "wandb.mode must be one of ['online', 'offline', 'disabled'], got 'sometimes'"),
    ({"train.ema_decay": 1.0}, "train.ema_decay must be a finite number >= 0 and < 1, got 1.0"),
])
def test_logger_and_ema_keys_are_checked(cfg_train, overrides, message):
    with pytest.raises(ConfigError) as error:
        validate_train(cfg_train(**overrides))
    assert str(error.value) == message
