"""Evaluation: the loop over a dataset split (shared by training validation and evaluate.py), the body of
evaluate.py, and the files it writes (``metrics.json``, the confusion matrix as CSV and PNG, a per-class table).

With the default settings of evaluate.py (output stride, AMP and batch size as trained) its numbers equal the
ones the training run logged, because both go through ``evaluate``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from seg.config import (
    ConfigError,
    backbone_name,
    crop_hw,
    dataset_kwargs,
    excluded_classes,
    inference_kwargs,
    overwrite_flag,
    require,
    to_plain,
    validate_inference,
    validate_loader,
)
from seg.data import build_dataset
from seg.data.channels import InputStats, display_rgb, stats_from_state
from seg.data.transforms import (
    TransformedDataset,
    eval_transform,
    leave_stop_signals_to_the_main_process,
    normalize,
    pad_collate,
)
from seg.engine import distributed
from seg.engine.checkpoint import CheckpointError, CheckpointSource, ModelSource, checkpoint_in, num_classes_of
from seg.engine.confidence import label_dtype
from seg.engine.device import autocast, resolve_amp, resolve_device, size_cpu_threads
from seg.engine.inference import default_stride, fit_to_memory, segment
from seg.io import replacing
from seg.metrics import confusion_matrix, metrics_from_confusion
from seg.outputs import check_outputs

log = logging.getLogger("seg.evaluate")

EVALUATION_FILES = ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png")  # what write_evaluation writes

Predictor = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
# Heat map colours: no pixels -> white, all of a row's pixels -> dark blue; grey rows have no labelled pixels.
EMPTY, FULL, NO_LABELS = np.array([255, 255, 255]), np.array([8, 48, 107]), np.array([200, 200, 200])

class Evaluation(NamedTuple):
    metrics: Dict                # the metrics.json content
    confusion: torch.Tensor      # [C, C] int64, rows: label, columns: prediction
    samples: List[Tuple[np.ndarray, np.ndarray, np.ndarray]]  # (image HxWx3, label, prediction) of the first images


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset, device: torch.device, predictor: Predictor = segment,
             batch_size: int = 1, num_workers: int = 0, amp_dtype: Optional[torch.dtype] = None,
             progress: bool = False, keep_samples: int = 0, exclude: Sequence[str] = (),
             stats: Optional[InputStats] = None) -> Evaluation:
    """Metrics (``metrics.json`` format) and the confusion matrix of ``model`` on ``dataset``.

    Labels stay at their original resolution. Under DDP each rank evaluates its own share of the images
    (no padded duplicates) and the confusion matrices are summed, so the result equals one process's.
    The first ``keep_samples`` images this process evaluates come back with their predictions (for overlays).
    ``exclude``: class names left out of the means (``metrics.exclude_classes``). ``stats``: the input's
    channels and normalisation (None: RGB, ImageNet's); kept images come back as RGB for display.
    """
    was_training = model.training
    model.eval()
    num_classes = dataset.num_classes
    indices = distributed.shard(list(range(len(dataset))))
    loader = DataLoader(Subset(TransformedDataset(dataset, eval_transform()), indices), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=pad_collate, pin_memory=device.type == "cuda",
                        worker_init_fn=leave_stop_signals_to_the_main_process,
                        generator=torch.Generator().manual_seed(0))
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    images_seen = torch.zeros((), dtype=torch.int64, device=device)
    samples: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for raw_images, raw_labels in tqdm(loader, desc="eval", disable=not (progress and distributed.is_main()),
                                       dynamic_ncols=True):
        images = normalize(raw_images.to(device, non_blocking=True), stats)
        labels = raw_labels.to(device, non_blocking=True)
        with autocast(device.type, amp_dtype):
            predictions = predictor(model, images).argmax(1)
        matrix += confusion_matrix(predictions, labels, num_classes, dataset.ignore_index)
        images_seen += images.shape[0]
        for i in range(min(keep_samples - len(samples), images.shape[0])):
            samples.append((display_rgb(raw_images[i].permute(1, 2, 0).numpy()), raw_labels[i].numpy(),
                            predictions[i].to(torch.int32).cpu().numpy().astype(label_dtype(num_classes))))
    distributed.all_reduce_sum(matrix)
    distributed.all_reduce_sum(images_seen)
    model.train(was_training)
    metrics = metrics_from_confusion(matrix, dataset.class_names, exclude)
    metrics["num_images"] = int(images_seen)
    return Evaluation(metrics, matrix.cpu(), samples)


# -- evaluate.py ---------------------------------------------------------------------------------------------

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
    if num_classes_of(state) == len(class_names) and state.get("class_names_recorded") is False:
        state["class_names"] = list(class_names)  # a file of another project that records none: the dataset's
        return
    if num_classes_of(state) != len(class_names):
        raise CheckpointError(
            f"the checkpoint predicts {num_classes_of(state)} classes ({', '.join(trained)}) but {where} has "
            f"{len(class_names)} ({', '.join(class_names)}): evaluate on the dataset it was trained for")
    if trained != list(class_names):
        log.warning("class names differ: checkpoint %s, %s %s (evaluating by index)", trained, where,
                    list(class_names))


def evaluate_checkpoint(config: Mapping, run_dir, source: Optional[ModelSource] = None) -> Dict:
    """Evaluate ``config["ckpt"]`` as configured by ``configs/evaluate.yaml``; rank 0 writes into ``run_dir``.
    ``source`` reads the checkpoint and builds its model (default: eager torch; ``seg.deployment``: runtimes).

    Returns the metrics (``metrics.json`` content). Runs under torchrun too: every process evaluates its share of
    the images and the confusion matrices are summed.
    """
    cfg = to_plain(config)
    require(cfg, "ckpt", "python scripts/evaluate.py ckpt=outputs/<run>/checkpoints/best.pt")
    validate_inference(cfg)
    validate_loader(cfg)
    cfg["ckpt"] = str(checkpoint_in(cfg["ckpt"]))
    inputs = {"ckpt": cfg["ckpt"], "dataset.root": cfg["dataset"].get("root")}
    check_outputs([Path(run_dir) / name for name in EVALUATION_FILES], inputs, "evaluation", overwrite_flag(cfg),
                  key="hydra.run.dir")
    size_cpu_threads(cfg["num_workers"])
    device_type = resolve_device(cfg["device"])
    distributed.init(device_type)
    try:
        source = source or CheckpointSource(cfg.get("weights", "auto"), cfg.get("channels_last", True))
        return _evaluate(cfg, Path(run_dir), distributed.local_device(device_type), source)
    finally:
        distributed.shutdown()


def _evaluate(cfg: Dict, run_dir: Path, device, source: ModelSource) -> Dict:
    state = source.state(cfg["ckpt"])
    trained = state["config"]
    if "layout" in state and "name" not in cfg["dataset"]:
        raise ConfigError(f"{cfg['ckpt']} is a {state['layout']} file, which records no dataset: name the one to "
                          "evaluate on, e.g. dataset=voc dataset.root=/data/VOC")
    dataset_cfg, split = evaluation_dataset(trained["dataset"], cfg["dataset"])
    stats = stats_from_state(state)  # the model's input: its images are read with its channels
    dataset = build_dataset(**{**dataset_kwargs(dataset_cfg, split=split), "channels": stats.channels})
    where = f"dataset {dataset_cfg['name']} split {split!r}"
    check_classes(state, dataset.class_names, where)
    exclude_cfg = cfg.get("metrics", {}).get("exclude_classes")
    exclude = excluded_classes(trained.get("metrics", {}).get("exclude_classes") if exclude_cfg is None
                               else exclude_cfg, dataset.class_names)
    model = source.model(state, cfg["ckpt"], cfg["os"], device)
    options = inference_kwargs(cfg, default_window=crop_hw(trained["train"]["crop_size"]))
    amp = cfg["amp"] if cfg["amp"] is not None else trained["train"]["amp"]
    amp_dtype = resolve_amp(amp, device.type, key="amp")
    log.info("evaluating %s (iteration %d, %s, output stride %d) on %s: %d images; %s, amp %s",
             cfg["ckpt"], state["iteration"], backbone_name(trained), model.output_stride, where, len(dataset),
             _describe(options), amp)
    metrics, matrix, _ = evaluate(model, dataset, device, predictor=fitting_predictor(options, dataset),
                               batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], amp_dtype=amp_dtype,
                               progress=True, exclude=exclude, stats=stats)
    if distributed.is_main():
        log.info("\n%s", metrics_table(metrics, matrix))  # first: a full disk must not cost the results
        paths = write_evaluation(run_dir, metrics, matrix, dataset.class_names)
        log.info("wrote %s, %s, %s", *paths.values())
    return metrics


def fitting_predictor(options: Mapping, dataset) -> Predictor:
    """``segment`` with ``options``, each batch fitted to the memory free (``fit_to_memory``: a whole image too
    large runs as the sliding window), named in its messages by its images' ids (``evaluate`` reads this process's
    share of the images in order)."""
    ids = iter([dataset.sample_id(i) if hasattr(dataset, "sample_id") else f"#{i}"
                for i in distributed.shard(list(range(len(dataset))))])

    def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        names = ", ".join(next(ids, "?") for _ in range(images.shape[0]))
        return segment(model, images, **fit_to_memory(model, images, options, f"image {names}"))

    return predict


def _describe(options: Mapping) -> str:
    text = f"scales {list(options['scales'])}, flip {options['flip']}, {options['mode']} inference"
    if options["mode"] == "slide":
        stride = options["stride"] or default_stride(options["window"])
        text += f" (window {list(options['window'])}, stride {list(stride)})"
    return text


# -- what evaluate.py writes -------------------------------------------------------------------------------

def write_evaluation(run_dir: Path, metrics: Mapping, matrix: torch.Tensor, class_names: Sequence[str]) -> Dict:
    """Write ``metrics.json``, ``confusion_matrix.csv`` and ``confusion_matrix.png``; return their paths.

    Each file is written under a temporary name and renamed when complete; a full disk is a ``DiskFullError``
    naming the file.
    """
    paths = {"metrics": run_dir / "metrics.json", "csv": run_dir / "confusion_matrix.csv",
             "png": run_dir / "confusion_matrix.png"}
    hint = "the metrics are in the table above; free some space and evaluate again"
    with replacing(paths["metrics"], hint) as temporary:
        temporary.write_text(json.dumps(dict(metrics), indent=2) + "\n")
    with replacing(paths["csv"], hint) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label \\ prediction", *class_names])
        for name, row in zip(class_names, matrix.tolist()):
            writer.writerow([name, *row])
    with replacing(paths["png"], hint) as temporary:
        confusion_heatmap(matrix, class_names).save(temporary)
    return paths


def metrics_table(metrics: Mapping, matrix: torch.Tensor) -> str:
    """Per-class IoU, Dice, precision and recall (percent) with each class's labelled pixel count, then the
    summary line; classes left out of the means are marked ``*``."""
    names = list(metrics["per_class_iou"])
    excluded = set(metrics.get("excluded_classes", ()))
    width = max(12, *(len(n) + 2 for n in names))
    columns = (("IoU %", "per_class_iou"), ("Dice %", "per_class_dice"), ("prec. %", "per_class_precision"),
               ("recall %", "per_class_recall"))
    label_pixels = matrix.sum(1).tolist()
    lines = [f"{'class':<{width}}" + "".join(f"  {title:>8}" for title, _ in columns) + f"  {'label pixels':>12}"]
    for name, pixels in zip(names, label_pixels):
        cells = "".join(f"  {_percent(metrics.get(key, {}).get(name)):>8}" for _, key in columns)
        lines.append(f"{name + (' *' if name in excluded else ''):<{width}}{cells}  {pixels:>12}")
    lines.append(f"mIoU {_percent(metrics['mIoU'])}  mDice {_percent(metrics.get('mDice'))}  pixel acc "
                 f"{_percent(metrics['pixel_acc'])}  mean acc {_percent(metrics['mean_acc'])}  fwIoU "
                 f"{_percent(metrics['fwIoU'])}  ({metrics['num_images']} images)")
    if excluded:
        lines.append(f"* left out of mIoU, mDice and mean acc (metrics.exclude_classes): {', '.join(sorted(excluded))}")
    return "\n".join(lines)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def confusion_heatmap(matrix: torch.Tensor, class_names: Sequence[str]) -> Image.Image:
    """Row-normalised confusion matrix as an RGB image: row i shows where the pixels labelled i were predicted.

    Class names are drawn along both axes when the cells are large enough to read them (up to ~60 classes).
    """
    counts = matrix.cpu().numpy().astype(np.float32)  # float32: 3000 classes' matrix is 36 MB, not 72
    rows = counts.sum(1, keepdims=True)
    fractions = counts / np.maximum(rows, 1)
    rgb = EMPTY.astype(np.float32) + fractions[..., None] * (FULL - EMPTY).astype(np.float32)
    rgb[rows[:, 0] == 0] = NO_LABELS
    n = len(class_names)
    cell = max(1 if n > 640 else 4, min(32, 640 // max(n, 1)))  # beyond 640 classes one pixel per cell
    grid = Image.fromarray(rgb.round().astype(np.uint8)).resize((n * cell, n * cell), Image.NEAREST)
    if cell < 10:
        return grid
    font = ImageFont.load_default()
    margin = int(max(font.getlength(name) for name in class_names)) + 8
    canvas = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    canvas.paste(grid, (margin, margin))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((margin - 1, margin - 1, margin + n * cell, margin + n * cell), outline="grey")
    columns = Image.new("RGB", (margin, n * cell), "white")  # drawn horizontally, then turned to read upwards
    column_draw = ImageDraw.Draw(columns)
    for i, name in enumerate(class_names):
        middle = i * cell + cell // 2
        draw.text((margin - 4, margin + middle), name, fill="black", font=font, anchor="rm")
        column_draw.text((4, middle), name, fill="black", font=font, anchor="lm")
    canvas.paste(columns.rotate(90, expand=True), (margin, 0))
    return canvas
