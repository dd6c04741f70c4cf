"""evaluate.py: a checkpoint evaluated on a dataset split, with the inference strategies of ``segment``.

The metrics come from ``seg.engine.evaluation.evaluate``, the function training validates with, so with the
default settings (output stride, AMP and batch size as trained) the numbers equal the ones the run logged.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Dict, Mapping, Tuple

from seg.config import ConfigError, crop_hw, dataset_kwargs, to_plain
from seg.data import build_dataset
from seg.engine import distributed
from seg.engine.checkpoint import CheckpointError
from seg.engine.evaluation import evaluate
from seg.engine.inference import segment
from seg.engine.options import inference_kwargs, require, validate_inference, validate_loader
from seg.engine.report import metrics_table, write_evaluation
from seg.engine.restore import load_trained, model_from_checkpoint, num_classes_of
from seg.engine.device import place, resolve_amp, resolve_device

log = logging.getLogger("seg.evaluate")


def evaluation_dataset(trained: Mapping, override: Mapping) -> Tuple[Dict, str]:
    """The dataset config and split to evaluate, from the checkpoint's ``dataset`` and evaluate.yaml's ``dataset``.

    Without a dataset choice, ``override`` holds only what the command line set (``dataset.root=...``,
    ``+dataset.<key>=...``) and its non-null keys are merged onto the config the model was trained with. With
    ``dataset=<name>`` (``override`` then has a ``name``) that dataset's config is used as it is. The split is
    ``dataset.split`` when given, else the dataset's ``val_split``.
    """
    given = {k: v for k, v in override.items() if v is not None}
    base = {} if "name" in override else dict(trained)
    merged = {**base, **given}
    split = given.get("split") or merged.get("val_split")
    if not split:
        raise ConfigError("dataset.split is required: the dataset config names no val_split")
    merged.setdefault("root", None)
    return merged, split


def check_classes(state: Mapping, class_names, where: str) -> None:
    """The model's output classes must be the dataset's: same count (else an error), same names (else a warning)."""
    trained = list(state["class_names"])
    if num_classes_of(state) != len(class_names):
        raise CheckpointError(
            f"the checkpoint predicts {num_classes_of(state)} classes ({', '.join(trained)}) but {where} has "
            f"{len(class_names)} ({', '.join(class_names)}): evaluate on the dataset it was trained for")
    if trained != list(class_names):
        log.warning("class names differ: checkpoint %s, %s %s (evaluating by index)", trained, where,
                    list(class_names))


def evaluate_checkpoint(config: Mapping, run_dir) -> Dict:
    """Evaluate ``config["ckpt"]`` as configured by ``configs/evaluate.yaml``; rank 0 writes into ``run_dir``.

    Returns the metrics (``metrics.json`` content). Runs under torchrun too: every process evaluates its share of
    the images and the confusion matrices are summed.
    """
    cfg = to_plain(config)
    require(cfg, "ckpt", "python scripts/evaluate.py ckpt=outputs/<run>/checkpoints/best.pt")
    validate_inference(cfg)
    validate_loader(cfg)
    device_type = resolve_device(cfg["device"])
    distributed.init(device_type)
    try:
        return _evaluate(cfg, Path(run_dir), distributed.local_device(device_type))
    finally:
        distributed.shutdown()


def _evaluate(cfg: Dict, run_dir: Path, device) -> Dict:
    state = load_trained(cfg["ckpt"])
    trained = state["config"]
    dataset_cfg, split = evaluation_dataset(trained["dataset"], cfg["dataset"])
    dataset = build_dataset(**dataset_kwargs(dataset_cfg, split=split))
    where = f"dataset {dataset_cfg['name']} split {split!r}"
    check_classes(state, dataset.class_names, where)
    model = place(model_from_checkpoint(state, cfg["os"], cfg["ckpt"]), device)
    options = inference_kwargs(cfg, default_window=crop_hw(trained["train"]["crop_size"]))
    amp = cfg["amp"] if cfg["amp"] is not None else trained["train"]["amp"]
    amp_dtype = resolve_amp(amp, device.type, key="amp")
    log.info("evaluating %s (iteration %d, %s, output stride %d) on %s: %d images; %s, amp %s",
             cfg["ckpt"], state["iteration"], trained["backbone"]["name"], model.output_stride, where, len(dataset),
             _describe(options), amp)
    metrics, matrix, _ = evaluate(model, dataset, device, predictor=functools.partial(segment, **options),
                               batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], amp_dtype=amp_dtype,
                               progress=True)
    if distributed.is_main():
        paths = write_evaluation(run_dir, metrics, matrix, dataset.class_names)
        log.info("\n%s", metrics_table(metrics, matrix))
        log.info("wrote %s, %s, %s", *paths.values())
    return metrics


def _describe(options: Mapping) -> str:
    text = f"scales {list(options['scales'])}, flip {options['flip']}, {options['mode']} inference"
    if options["mode"] == "slide":
        text += f" (window {list(options['window'])}, stride {list(options['stride'])})"
    return text
