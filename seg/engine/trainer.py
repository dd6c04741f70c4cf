"""The training loop: iteration-based SGD with poly LR, AMP, exact resume, TensorBoard and DDP."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg.config import crop_hw, dataset_kwargs, model_kwargs, to_plain, validate_train
from seg.data import build_dataset
from seg.data.transforms import TransformedDataset, train_transform, worker_init_fn
from seg.engine import distributed
from seg.engine.device import place, resolve_amp, resolve_device
from seg.engine.checkpoint import (all_finite, check_resume_config, load_checkpoint, restore_rng,
                                   save_checkpoint, unwrap)
from seg.engine.evaluation import evaluate
from seg.engine.losses import segmentation_loss
from seg.engine.run_files import RunFiles
from seg.engine.sampler import ResumableSampler
from seg.engine.step import TrainStep
from seg.errors import UserError
from seg.models import build_model, load_weights
from seg.models.weights import fetch_imagenet_weights
from seg.visualize import overlay

log = logging.getLogger("seg.train")


class TrainingDiverged(UserError, RuntimeError):
    pass


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float,
                 head_lr_mult: float) -> List[Dict]:
    """Backbone and head groups with their LR multipliers; no weight decay on BatchNorm and biases."""
    groups: Dict = {}
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        decay = param.ndim > 1
        key = (part, decay)
        if key not in groups:
            mult = backbone_lr_mult if part == "backbone" else head_lr_mult
            groups[key] = {"params": [], "lr": lr * mult, "weight_decay": weight_decay if decay else 0.0,
                           "name": f"{part}{'' if decay else '_no_decay'}"}
        groups[key]["params"].append(param)
    return list(groups.values())


def poly_schedule(iters: int, power: float, warmup_iters: int):
    def factor(iteration: int) -> float:
        poly = max(0.0, 1.0 - iteration / iters) ** power
        if warmup_iters and iteration < warmup_iters:
            return poly * (iteration + 1) / warmup_iters
        return poly
    return factor


def _fresh_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Zero momentum buffers up front: fused SGD leaves them uninitialised if the first step is skipped."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)


def build_optimizer(model: nn.Module, train_cfg: Mapping, amp_dtype: Optional[torch.dtype], device_type: str):
    """Fused SGD with the backbone/head groups, the poly schedule and a GradScaler (enabled for fp16 only)."""
    optimizer = torch.optim.SGD(
        param_groups(model, train_cfg["lr"], train_cfg["weight_decay"], train_cfg["backbone_lr_mult"],
                     train_cfg["head_lr_mult"]),
        lr=train_cfg["lr"], momentum=train_cfg["momentum"], fused=True)
    _fresh_momentum(optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_schedule(train_cfg["iters"], train_cfg["poly_power"], train_cfg["warmup_iters"]))
    scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
    return optimizer, scheduler, scaler


def make_loss(train_cfg: Mapping, ignore_index: int):
    """``outputs, labels -> loss``: ``train.loss`` on the main output plus ``train.aux_weight`` times the
    auxiliary head's."""
    kind, bootstrap_fraction, aux_weight = train_cfg["loss"], train_cfg["bootstrap_fraction"], train_cfg["aux_weight"]

    def loss_fn(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss = segmentation_loss(outputs["out"].float(), labels, kind, ignore_index, bootstrap_fraction)
        if "aux" in outputs and aux_weight > 0:
            loss = loss + aux_weight * segmentation_loss(outputs["aux"].float(), labels, kind, ignore_index,
                                                         bootstrap_fraction)
        return loss

    return loss_fn


def build_train_loader(dataset, sampler: ResumableSampler, train_cfg: Mapping, batch_per_rank: int,
                       pin_memory: bool, seed: int) -> DataLoader:
    """Augmented uint8 crops from ``sampler``'s stream, with workers that keep a GPU fed."""
    transform = train_transform(crop_hw(train_cfg["crop_size"]), scale_range=tuple(train_cfg["scale_range"]),
                                hflip=train_cfg["hflip"], color_jitter=train_cfg["color_jitter"])
    workers = train_cfg["num_workers"]
    return DataLoader(TransformedDataset(dataset, transform), batch_size=batch_per_rank, sampler=sampler,
                      num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                      worker_init_fn=worker_init_fn, drop_last=True, prefetch_factor=4 if workers > 0 else None,
                      # A private generator: creating the loader must not consume the global RNG.
                      generator=torch.Generator().manual_seed(seed))


def train(config: Mapping, run_dir) -> Dict:
    """Train from a configuration (``configs/train.yaml`` layout, a plain dict or an OmegaConf config).

    Returns a summary: final iteration, best and last validation mIoU, logged losses and skipped steps.
    """
    cfg = to_plain(config)
    validate_train(cfg)
    device_type = resolve_device(cfg["device"])
    distributed.init(device_type)
    try:
        trainer = Trainer(cfg, Path(run_dir), device_type)
        try:
            return trainer.run()
        finally:
            trainer.files.close()
    finally:
        distributed.shutdown()


class Trainer:
    def __init__(self, cfg: Dict, run_dir: Path, device_type: str):
        self.cfg, self.t = cfg, cfg["train"]
        self.device = distributed.local_device(device_type)
        self.world, self.rank = distributed.world_size(), distributed.rank()
        if self.t["batch_size"] % self.world:
            raise UserError(f"train.batch_size={self.t['batch_size']} (the global batch) must be divisible by "
                            f"the number of processes ({self.world})")
        self.batch_per_rank = self.t["batch_size"] // self.world
        self.amp_dtype = resolve_amp(self.t["amp"], device_type)
        self.channels_last = device_type == "cuda"
        if device_type == "cuda":
            torch.backends.cudnn.benchmark = True  # training crops have one fixed shape
        seed = int(cfg["seed"])
        torch.manual_seed(seed + self.rank)
        np.random.seed(seed + self.rank)

        resume_state = load_checkpoint(cfg["resume"]) if cfg.get("resume") else None
        if cfg["backbone"]["pretrained"] == "imagenet" and not resume_state and distributed.is_main():
            fetch_imagenet_weights(cfg["backbone"]["name"])  # fail before any work when they cannot be had
        distributed.barrier()
        self.train_set, self.val_set = self._datasets()
        self.class_names = list(self.train_set.class_names)
        self.palette = np.asarray(self.train_set.palette, dtype=np.uint8)
        self.cfg["dataset"]["num_classes"] = self.train_set.num_classes
        if resume_state is not None:
            check_resume_config(resume_state["config"], cfg, cfg["resume"])
        self.start_iter = resume_state["iteration"] if resume_state else 0
        self.files = RunFiles(run_dir, distributed.is_main(), self.start_iter)
        if resume_state:
            log.info("resuming %s at iteration %d", cfg["resume"], self.start_iter)
        self.model = self._model(resume_state)
        self.optimizer, self.scheduler, self.scaler = build_optimizer(self.model, self.t, self.amp_dtype,
                                                                      device_type)
        self.best_miou = -1.0
        self.loss_history: List = []
        self.nonfinite_total = 0
        if resume_state:
            self._restore(resume_state)
        self.sampler = ResumableSampler(len(self.train_set), seed, self.rank, self.world,
                                        start=self.start_iter * self.batch_per_rank)

    # -- construction -----------------------------------------------------------------------------------
    def _datasets(self):
        dataset_cfg = self.cfg["dataset"]
        if distributed.is_main():  # rank 0 first: a generated dataset (synthetic) is written once
            train_set = build_dataset(**dataset_kwargs(dataset_cfg))
        distributed.barrier()
        if not distributed.is_main():
            train_set = build_dataset(**dataset_kwargs(dataset_cfg))
        val_set = build_dataset(**dataset_kwargs(dataset_cfg, split=dataset_cfg["val_split"]))
        log.info("data: %s train %d images (%s), val %d images (%s), %d classes", dataset_cfg["name"],
                 len(train_set), dataset_cfg["split"], len(val_set), dataset_cfg["val_split"], train_set.num_classes)
        return train_set, val_set

    def _model(self, resume_state: Optional[Mapping]) -> nn.Module:
        # Backbone weights are irrelevant when a resume overwrites everything: never download them then.
        pretrained = "none" if resume_state else None
        model = build_model(**model_kwargs(self.cfg, self.train_set.num_classes, pretrained))
        if self.cfg["model"].get("weights") and not resume_state:
            report = load_weights(model, self.cfg["model"]["weights"])
            log.info("model.weights %s: %s", self.cfg["model"]["weights"], report.summary())
        if resume_state:
            model.load_state_dict(resume_state["model"])
        if self.world > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.world > 1:
            log.info("SyncBatchNorm needs CUDA: on the CPU each process keeps its own BatchNorm statistics")
        place(model, self.device)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if self.t.get("compile"):
            model = torch.compile(model)
        return model

    def _restore(self, state: Mapping) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        # LambdaLR keeps its schedule function (built from the current train.iters) and restores the position.
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_miou = state["best_miou"]
        self.nonfinite_total = state.get("nonfinite_steps", 0)
        if self.world == 1:
            restore_rng(state["rng"])

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self) -> Dict:
        t = self.t
        iters = t["iters"]
        stop_at = min(iters, t["stop_at"]) if t.get("stop_at") else iters
        if self.start_iter >= stop_at:
            log.info("the run is already at iteration %d of %d: nothing to train (raise train.iters to go on)",
                     self.start_iter, stop_at)
        batches = iter(build_train_loader(self.train_set, self.sampler, t, self.batch_per_rank,
                                          self.device.type == "cuda", int(self.cfg["seed"])))
        device = self.device
        self.model.train()
        loss_fn = make_loss(t, self.val_set.ignore_index)
        step = TrainStep(self.model, self.optimizer, loss_fn, device, self.amp_dtype, self.channels_last,
                         self.scaler)
        loss_sum = torch.zeros((), device=device)
        run_nonfinite = torch.zeros((), device=device)
        worst_run = torch.zeros((), device=device)
        window_nonfinite = torch.zeros((), device=device)
        window_start, window_steps = time.perf_counter(), 0
        last_metrics: Optional[Dict] = None
        bar = tqdm(total=iters, initial=self.start_iter, desc="train", dynamic_ncols=True,
                   disable=not distributed.is_main())
        for iteration in range(self.start_iter + 1, stop_at + 1):
            loss, nonfinite = step(*next(batches))
            self.scheduler.step()
            run_nonfinite = (run_nonfinite + nonfinite) * nonfinite
            worst_run = torch.maximum(worst_run, run_nonfinite)
            window_nonfinite += nonfinite
            loss_sum += torch.where(nonfinite > 0, torch.zeros_like(loss_sum), loss)
            window_steps += 1
            bar.update(1)

            last = iteration == stop_at
            if iteration % t["log_every"] == 0 or last:
                self._log_window(iteration, loss_sum, window_nonfinite, window_steps, window_start, bar)
                if int(worst_run) >= t["max_nonfinite"]:
                    raise TrainingDiverged(
                        f"{int(worst_run)} consecutive training steps had a non-finite loss (train.max_nonfinite="
                        f"{t['max_nonfinite']}); stopped at iteration {iteration} without saving, the last "
                        f"checkpoint in {self.files.checkpoints} is intact: lower train.lr or use train.amp=off")
                loss_sum.zero_(), window_nonfinite.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if (t["eval_every"] and iteration % t["eval_every"] == 0) or iteration == iters:
                last_metrics = self._validate(iteration)
            if (t["ckpt_every"] and iteration % t["ckpt_every"] == 0) or last:
                self._save("last.pt", iteration)
        bar.close()
        return {"iteration": stop_at, "best_miou": self.best_miou, "last_metrics": last_metrics,
                "losses": self.loss_history, "nonfinite_steps": self.nonfinite_total}

    def _log_window(self, iteration, loss_sum, window_nonfinite, steps, start, bar) -> None:
        """The only host synchronisation of the loop: once every ``train.log_every`` iterations."""
        skipped = int(window_nonfinite)
        self.nonfinite_total += skipped
        good = steps - skipped
        loss = float(loss_sum) / good if good else math.nan
        elapsed = time.perf_counter() - start
        images_per_s = steps * self.t["batch_size"] / max(elapsed, 1e-9)
        lr = self.optimizer.param_groups[0]["lr"]
        self.loss_history.append((iteration, loss))
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
        eta = (self.t["iters"] - iteration) * elapsed / max(steps, 1)
        log.info("iter %d/%d loss %r lr %.6g images/s %.1f skipped %d eta %s", iteration, self.t["iters"], loss,
                 lr, images_per_s, skipped, time.strftime("%H:%M:%S", time.gmtime(eta)))
        self.files.scalars({"train/loss": loss if good else None, "train/lr": lr,
                            "train/images_per_s": images_per_s, "train/skipped_steps": self.nonfinite_total},
                           iteration)

    def _validate(self, iteration: int) -> Dict:
        model = unwrap(self.model)
        distributed.broadcast_buffers(model)
        metrics, _, samples = evaluate(model, self.val_set, self.device, batch_size=self.t["val_batch_size"],
                                       num_workers=min(self.t["num_workers"], 2), amp_dtype=self.amp_dtype,
                                       keep_samples=self.t["tb_images"] if distributed.is_main() else 0)
        record = {"iter": iteration, **metrics}
        self.files.metrics(record)
        self.files.scalars({"val/mIoU": metrics["mIoU"], "val/pixel_acc": metrics["pixel_acc"],
                            "val/mean_acc": metrics["mean_acc"]}, iteration)
        self.files.scalars({f"val/IoU/{name}": value for name, value in metrics["per_class_iou"].items()},
                           iteration)
        log.info("val iter %d: mIoU %.4f pixel_acc %.4f mean_acc %.4f (%d images)", iteration, metrics["mIoU"],
                 metrics["pixel_acc"], metrics["mean_acc"], metrics["num_images"])
        for i, (image, label, prediction) in enumerate(samples):
            panel = np.concatenate([image, overlay(image, label, self.palette),
                                    overlay(image, prediction, self.palette)], axis=1)
            self.files.images(f"val/overlay_{i}", panel, iteration)
        if metrics["mIoU"] > self.best_miou:
            self.best_miou = metrics["mIoU"]
            self._save("best.pt", iteration)
        return record

    def _save(self, name: str, iteration: int) -> None:
        if not distributed.is_main():
            return
        if not all_finite(unwrap(self.model)):
            log.error("not writing %s at iteration %d: the model has non-finite values; the previous file is kept",
                      name, iteration)
            return
        save_checkpoint(self.files.checkpoints / name, model=self.model, config=self.cfg,
                        class_names=self.class_names, palette=self.palette.tolist(), iteration=iteration,
                        optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                        sampler_position=self.sampler.position(iteration * self.batch_per_rank),
                        best_miou=self.best_miou, extra={"nonfinite_steps": self.nonfinite_total})
