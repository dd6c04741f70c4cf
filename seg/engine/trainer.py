"""The training loop: iteration-based SGD with poly LR, AMP, exact resume, DDP, and the files a run writes
(train.log, metrics.jsonl, TensorBoard events; checkpoints through ``seg.engine.checkpoint``)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from seg.config import (
    backbone_name,
    batchnorm_kwargs,
    crop_hw,
    dataset_kwargs,
    dataset_stats,
    excluded_classes,
    model_kwargs,
    to_plain,
    tracker_kwargs,
    validate_class_weights,
    validate_train,
)
from seg.data import build_dataset
from seg.data.class_weights import resolve_class_weights
from seg.data.folder import write_split_lists
from seg.data.loader import build_train_loader
from seg.engine import autoresume, batchnorm, distributed
from seg.engine.checkpoint import (
    all_finite,
    check_resume_config,
    checkpoint_in,
    free_space_hint,
    load_checkpoint,
    remove_partial_saves,
    restore_rng,
    resume_changes,
    reuse_recorded,
    save_checkpoint,
)
from seg.engine.device import openmp_threads_sleep, place, resolve_amp, resolve_device, size_cpu_threads, unwrap
from seg.engine.ema import build_ema, ema_state, restore_ema
from seg.engine.evaluation import evaluate
from seg.engine.interrupt import Coordinator, StopRequests, exit_code
from seg.engine.losses import make_loss
from seg.engine.optim import build_optimizer, resume_optimizer
from seg.engine.runlock import RunLock
from seg.engine.sampler import ResumableSampler
from seg.engine.step import TrainStep
from seg.engine.trackers import Trackers, open_trackers
from seg.errors import Interrupted, UserError, record_in_log_files
from seg.io import DiskFullError, is_disk_full
from seg.models import build_model, load_weights
from seg.models.deeplab import convert_sync_batchnorm, fetch_backbone_weights
from seg.models.weights import load_exact
from seg.visualize import overlay

log = logging.getLogger("seg.train")


class TrainingDiverged(UserError, RuntimeError):
    pass


class RunFolderError(UserError, OSError):
    pass


class RankTimeout(UserError, RuntimeError):
    pass


def train(config: Mapping, run_dir) -> Dict:
    """Train from a configuration (``configs/train.yaml`` layout, a plain dict or an OmegaConf config).

    Returns a summary: final iteration, best and last validation mIoU, logged losses and skipped steps.
    """
    cfg = to_plain(config)
    validate_train(cfg)
    auto = cfg.get("resume") == autoresume.AUTO
    if cfg.get("resume") and not auto:
        cfg["resume"] = str(checkpoint_in(cfg["resume"], resume=True))
    size_cpu_threads(cfg["train"]["num_workers"])
    device_type = resolve_device(cfg["device"])
    distributed.init(device_type, cfg["dist_timeout_min"])
    if auto:  # after init: rank 0 decides for all ranks
        cfg["resume"] = autoresume.resolve(Path(run_dir), cfg.get("resume_wait_s", autoresume.DEFAULT_WAIT_S))
    requests = StopRequests()
    requests.install()  # from here a signal is a request: the set-up finishes, the run stops after its first step
    try:
        trainer = Trainer(cfg, Path(run_dir), device_type)
        try:
            return trainer.run(requests)
        except Interrupted as stop:
            if str(stop):
                trainer.files.record(stop, logging.WARNING)
            raise
        except UserError as error:
            trainer.files.record(error)
            raise
        except OSError as error:  # TensorBoard's events (saves and metrics.jsonl raise DiskFullError themselves)
            if not is_disk_full(error):
                raise
            full = trainer.files.disk_full(trainer.files.run_dir / "tensorboard")
            trainer.files.record(full)
            raise full from None
        except RuntimeError as error:
            if not distributed.timed_out(error):
                raise
            stuck = RankTimeout(
                f"rank {distributed.rank()} waited more than dist_timeout_min={cfg['dist_timeout_min']} minutes for "
                f"the other ranks (one is stopped, hung or dead); the checkpoints in {trainer.files.checkpoints} "
                "are as last saved: resume from checkpoints/last.pt once every rank runs")
            trainer.files.record(stuck)
            raise stuck from None
        finally:
            trainer.files.close()
            trainer.lock.release()
    finally:
        requests.uninstall()
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
        self.accumulate = int(self.t.get("accumulate", 1))  # batches per optimizer step; train.iters counts steps
        self.amp_dtype = resolve_amp(self.t["amp"], device_type)
        self.stats = dataset_stats(cfg["dataset"])  # the input's channels and normalisation (seg.data.channels)
        if self.stats.channels != 3:  # recorded as numbers: evaluate, predict and export read them back
            cfg["dataset"].update(mean=list(self.stats.mean), std=list(self.stats.std))
        self.channels_last = device_type == "cuda"
        if device_type == "cuda":
            torch.backends.cudnn.benchmark = True  # training crops have one fixed shape
        seed = int(cfg["seed"])
        torch.manual_seed(seed + self.rank)
        np.random.seed(seed + self.rank)

        resume_state = load_checkpoint(cfg["resume"]) if cfg.get("resume") else None
        if cfg["backbone"]["pretrained"] == "imagenet" and not resume_state and distributed.is_main():
            fetch_backbone_weights(backbone_name(cfg))  # fail before any work when they cannot be had
        distributed.barrier()
        # One training per folder, taken before this run logs or writes anything there (rank 0 writes for all).
        self.requests = StopRequests()  # run() takes train()'s, whose handlers are installed
        self.lock = RunLock(run_dir).acquire() if distributed.is_main() else RunLock(run_dir)
        try:
            self._setup(cfg, run_dir, device_type, seed, resume_state)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, cfg: Dict, run_dir: Path, device_type: str, seed: int, resume_state: Optional[Mapping]) -> None:
        """Data, class weights and the run files, then ``_prepare``; the caller holds the run folder's lock."""
        if resume_state is not None:
            reuse_recorded(resume_state["config"], cfg)
        self.train_set, self.val_set = self._datasets()
        self.class_names = list(self.train_set.class_names)
        self.palette = np.asarray(self.train_set.palette, dtype=np.uint8)
        self.cfg["dataset"]["num_classes"] = self.train_set.num_classes
        self.exclude = excluded_classes(cfg.get("metrics", {}).get("exclude_classes"), self.class_names)
        self.class_weights = self._class_weights()
        if resume_state is not None:
            check_resume_config(resume_state["config"], cfg, cfg["resume"])
        self.start_iter = resume_state["iteration"] if resume_state else 0
        self.files = RunFiles(run_dir, distributed.is_main(), self.start_iter)
        try:
            if self.files.enabled:  # rank 0: after the log file, so that a tracker's warning lands in train.log
                self.files.trackers = open_trackers(tracker_kwargs(cfg), cfg, run_dir,
                                                    (resume_state or {}).get("trackers"))
            self._prepare(run_dir, device_type, seed, resume_state)
        except BaseException as error:  # the run's log handler and thread hook go with the run
            if isinstance(error, UserError):
                self.files.record(error)
            self.files.close()
            raise

    def _prepare(self, run_dir: Path, device_type: str, seed: int, resume_state: Optional[Mapping]) -> None:
        """What follows the run files: model, optimizer, resumed state, sampler."""
        cfg = self.cfg
        if resume_state:
            log.info("resuming %s at iteration %d", cfg["resume"], self.start_iter)
            for line in resume_changes(resume_state["config"], cfg, self.start_iter):
                log.info(line)
        if cfg["dataset"].get("splits") and distributed.is_main():
            paths = write_split_lists(run_dir / "splits", cfg["dataset"]["splits"])
            log.info("split (recorded in the checkpoints' dataset.splits): %s", ", ".join(
                f"{split} {len(stems)} images" for split, stems in cfg["dataset"]["splits"].items()))
            log.info("wrote %s", ", ".join(str(path) for path in paths))
        log.info("cpu: %d torch threads (OpenMP threads %s while waiting), %d data-loader workers",
                 torch.get_num_threads(), "sleep" if openmp_threads_sleep() else "spin", self.t["num_workers"])
        self.model = self._model(resume_state)
        self.optimizer, self.scheduler, self.scaler = build_optimizer(self.model, self.t, self.amp_dtype,
                                                                      device_type)
        self.best_miou = -1.0
        self.loss_history: List = []
        self.nonfinite_total = 0
        if resume_state:
            self._restore(resume_state)
        self.ema = build_ema(unwrap(self.model), self.t.get("ema_decay"))
        if self.ema is not None and resume_state:
            restore_ema(self.ema, resume_state)
        self.sampler = ResumableSampler(len(self.train_set), seed, self.rank, self.world,
                                        start=self.start_iter * self.samples_per_step)
        if self.accumulate > 1:
            log.info("gradient accumulation: effective batch %d = train.accumulate %d x %d per process x %d processes "
                     "(train.batch_size %d); one optimizer step per %d batches", self.accumulate * self.t["batch_size"],
                     self.accumulate, self.batch_per_rank, self.world, self.t["batch_size"], self.accumulate)

    @property
    def samples_per_step(self) -> int:
        """Samples one rank consumes per iteration (optimizer step): its batch times ``train.accumulate``."""
        return self.batch_per_rank * self.accumulate

    # -- construction -----------------------------------------------------------------------------------
    def _datasets(self):
        dataset_cfg = self.cfg["dataset"]
        if distributed.is_main():  # rank 0 first: a generated dataset (synthetic) is written once
            train_set = build_dataset(**dataset_kwargs(dataset_cfg))
        distributed.barrier()
        if not distributed.is_main():
            train_set = build_dataset(**dataset_kwargs(dataset_cfg))
        if train_set.derived_splits:  # no split lists: record the split made up from val_fraction and seed
            dataset_cfg["splits"] = train_set.derived_splits
        if dataset_cfg.get("class_names") is None and getattr(train_set, "classes_from_data", False):
            dataset_cfg["class_names"] = list(train_set.class_names)  # found in the files: val and evaluate reuse it
        val_set = build_dataset(**dataset_kwargs(dataset_cfg, split=dataset_cfg["val_split"]))
        log.info("data: %s train %d images (%s), val %d images (%s), %d classes", dataset_cfg["name"],
                 len(train_set), dataset_cfg["split"], len(val_set), dataset_cfg["val_split"], train_set.num_classes)
        return train_set, val_set

    def _class_weights(self) -> Optional[List[float]]:
        """``train.class_weights`` resolved (rank 0 first: it reads the masks once and caches the statistics) and
        recorded as the list in the config the checkpoints store."""
        spec = self.t.get("class_weights")
        validate_class_weights(spec, self.train_set.num_classes)
        if distributed.is_main():
            weights = resolve_class_weights(spec, self.train_set, progress=True)
        distributed.barrier()
        if not distributed.is_main():
            weights = resolve_class_weights(spec, self.train_set)
        if weights is not None:
            self.t["class_weights"] = weights
            log.info("class weights (%s): %s", spec if isinstance(spec, str) else "given", ", ".join(
                f"{name} {weight:.4g}" for name, weight in zip(self.train_set.class_names, weights)))
        return weights

    def _model(self, resume_state: Optional[Mapping]) -> nn.Module:
        # Backbone weights are irrelevant when a resume overwrites everything: never download them then.
        pretrained = "none" if resume_state else None
        model = build_model(**model_kwargs(self.cfg, self.train_set.num_classes, pretrained))
        if self.cfg["model"].get("weights") and not resume_state:
            report = load_weights(model, self.cfg["model"]["weights"])
            log.info("model.weights %s: %s", self.cfg["model"]["weights"], report.summary())
        if resume_state:
            load_exact(model, resume_state["model"], f"resume={self.cfg['resume']}", "the model of the run's config")
        bn = batchnorm_kwargs(self.cfg)
        if self.world > 1 and self.device.type == "cuda" and not bn["freeze_bn"]:  # frozen BN has nothing to sync
            model = convert_sync_batchnorm(model)
        elif self.world > 1 and not bn["freeze_bn"]:
            log.info("SyncBatchNorm needs CUDA: on the CPU each process keeps its own BatchNorm statistics")
        batchnorm.configure(model, **bn)  # after the conversion, before the optimizer and DDP see the parameters
        place(model, self.device)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        if self.t.get("compile"):
            model = torch.compile(model)
        return model

    def _restore(self, state: Mapping) -> None:
        # The momentum buffers come from the checkpoint; lr, momentum, weight decay and the schedule from train.*
        self.scheduler = resume_optimizer(self.optimizer, state["optimizer"], self.t, self.start_iter)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_miou = state["best_miou"]
        self.nonfinite_total = state.get("nonfinite_steps", 0)
        if self.world == 1:
            restore_rng(state["rng"])

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self, requests: Optional[StopRequests] = None) -> Dict:
        """Train to ``train.iters`` (or ``train.stop_at``); on a signal in ``requests``, stop after the step in
        progress with ``last.pt`` at that iteration and raise ``Interrupted``."""
        t = self.t
        self.requests = requests or StopRequests()
        coordinator = Coordinator(self.requests, t.get("ckpt_every_min", 30), self.world, distributed.is_main())
        iters = t["iters"]
        stop_at = min(iters, t["stop_at"]) if t.get("stop_at") else iters
        if self.start_iter >= stop_at:
            log.info("the run is already at iteration %d of %d: nothing to train (raise train.iters to go on)",
                     self.start_iter, stop_at)
        batches = iter(build_train_loader(
            self.train_set, self.sampler, self.batch_per_rank, crop_hw(t["crop_size"]), tuple(t["scale_range"]),
            t["hflip"], t["color_jitter"], t["num_workers"], pin_memory=self.device.type == "cuda",
            seed=int(self.cfg["seed"]), stats=self.stats))
        device = self.device
        self.model.train()
        weights = None if self.class_weights is None else torch.tensor(self.class_weights, device=device)
        loss_fn = make_loss(t, self.val_set.ignore_index, weights)
        step = TrainStep(self.model, self.optimizer, loss_fn, device, self.amp_dtype, self.channels_last,
                         self.scaler, self.accumulate, stats=self.stats)
        loss_sum = torch.zeros((), device=device)
        run_nonfinite = torch.zeros((), device=device)
        worst_run = torch.zeros((), device=device)
        window_nonfinite = torch.zeros((), device=device)
        window_start, window_steps = time.perf_counter(), 0
        last_metrics: Optional[Dict] = None
        with tqdm(total=iters, initial=self.start_iter, desc="train", dynamic_ncols=True,
                  disable=not distributed.is_main()) as bar, coordinator:  # closed also on an error
            for iteration in range(self.start_iter + 1, stop_at + 1):
                loss, nonfinite = step(*next(batches), batches)  # train.accumulate batches, one update
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(unwrap(self.model))
                run_nonfinite = (run_nonfinite + nonfinite) * nonfinite
                worst_run = torch.maximum(worst_run, run_nonfinite)
                window_nonfinite += nonfinite
                loss_sum += torch.where(nonfinite > 0, torch.zeros_like(loss_sum), loss)
                window_steps += 1
                bar.update(1)
                signum, time_due = coordinator.after_step()

                last = iteration == stop_at
                stopping = signum is not None and not last
                if iteration % t["log_every"] == 0 or last or stopping:
                    self._log_window(iteration, loss_sum, window_nonfinite, window_steps, window_start, bar)
                    if int(worst_run) >= t["max_nonfinite"]:
                        raise TrainingDiverged(
                            f"{int(worst_run)} consecutive training steps had a non-finite loss (train.max_nonfinite="
                            f"{t['max_nonfinite']}); stopped at iteration {iteration} without saving, the last "
                            f"checkpoint in {self.files.checkpoints} is intact: lower train.lr or use train.amp=off")
                    loss_sum.zero_(), window_nonfinite.zero_()
                    window_start, window_steps = time.perf_counter(), 0
                if ((t["eval_every"] and iteration % t["eval_every"] == 0) or iteration == iters) and not stopping:
                    last_metrics = self._validate(iteration)
                if (t["ckpt_every"] and iteration % t["ckpt_every"] == 0) or last or time_due or stopping:
                    self._save("last.pt", iteration)  # once per iteration, whichever rules asked for it
                    coordinator.saved()
                if stopping:
                    self._stop(signum, iteration)
        if stop_at == iters:
            self.files.finish(self.files.checkpoints / "best.pt")
        return {"iteration": stop_at, "best_miou": self.best_miou, "last_metrics": last_metrics,
                "losses": self.loss_history, "nonfinite_steps": self.nonfinite_total}

    def _stop(self, signum: int, iteration: int) -> None:
        distributed.barrier()  # no rank exits (which makes torchrun stop the others) before rank 0's save is done
        last = (self.files.checkpoints / "last.pt").absolute()
        message = f"interrupted at iteration {iteration}/{self.t['iters']}; resume with resume={last}"
        raise Interrupted(message if distributed.is_main() else "", exit_code(signum))

    def _log_window(self, iteration, loss_sum, window_nonfinite, steps, start, bar) -> None:
        """The only host synchronisation of the loop: once every ``train.log_every`` iterations."""
        skipped = int(window_nonfinite)
        self.nonfinite_total += skipped
        good = steps - skipped
        loss = float(loss_sum) / good if good else math.nan
        elapsed = time.perf_counter() - start
        images_per_s = steps * self.t["batch_size"] * self.accumulate / max(elapsed, 1e-9)
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
        """Evaluate the model, and its EMA beside it (``ema_`` keys in metrics.jsonl, ``val_ema/`` in TensorBoard);
        best.pt by the EMA's mIoU where there is one: the weights evaluate, predict and export then use."""
        metrics, samples = self._evaluate(unwrap(self.model), "val", iteration, self.t["tb_images"])
        record = {"iter": iteration, **metrics}
        best_by = metrics["mIoU"]
        if self.ema is not None:
            ema_metrics, _ = self._evaluate(self.ema.module, "val_ema", iteration, 0)
            record.update({f"ema_{key}": value for key, value in ema_metrics.items()})
            best_by = ema_metrics["mIoU"]
        self.files.metrics(record)
        for i, (image, label, prediction) in enumerate(samples):
            panel = np.concatenate([image, overlay(image, label, self.palette),
                                    overlay(image, prediction, self.palette)], axis=1)
            self.files.images(f"val/overlay_{i}", panel, iteration)
        if best_by is not None and best_by > self.best_miou:  # None: no labelled pixels
            self.best_miou = best_by
            self._save("best.pt", iteration)
        return record

    def _evaluate(self, model: nn.Module, tag: str, iteration: int, keep_samples: int):
        """One model's validation metrics, logged under ``tag`` (TensorBoard, trackers, train.log)."""
        distributed.broadcast_buffers(model)
        metrics, _, samples = evaluate(model, self.val_set, self.device, batch_size=self.t["val_batch_size"],
                                       num_workers=min(self.t["num_workers"], 2), amp_dtype=self.amp_dtype,
                                       keep_samples=keep_samples if distributed.is_main() else 0,
                                       exclude=self.exclude, stats=self.stats)
        self.files.scalars({f"{tag}/mIoU": metrics["mIoU"], f"{tag}/mDice": metrics["mDice"],
                            f"{tag}/pixel_acc": metrics["pixel_acc"], f"{tag}/mean_acc": metrics["mean_acc"]},
                           iteration)
        for name, key in (("IoU", "per_class_iou"), ("Dice", "per_class_dice"),
                          ("precision", "per_class_precision"), ("recall", "per_class_recall")):
            self.files.scalars({f"{tag}/{name}/{label}": value for label, value in metrics[key].items()}, iteration)
        log.info("%s iter %d: mIoU %s mDice %s pixel_acc %s mean_acc %s (%d images)",
                 "val" if tag == "val" else "val (EMA)", iteration,
                 *("null" if metrics[k] is None else f"{metrics[k]:.4f}" for k in ("mIoU", "mDice", "pixel_acc",
                                                                                   "mean_acc")),
                 metrics["num_images"])
        return metrics, samples

    def _save(self, name: str, iteration: int) -> None:
        if not distributed.is_main():
            return
        if not all_finite(unwrap(self.model)) or (self.ema is not None and not all_finite(self.ema.module)):
            log.error("not writing %s at iteration %d: the model has non-finite values; the previous file is kept",
                      name, iteration)
            return
        self.requests.saving = True  # a second signal now says that it waits for the save
        try:
            save_checkpoint(self.files.checkpoints / name, model=self.model, config=self.cfg,
                            class_names=self.class_names, palette=self.palette.tolist(), iteration=iteration,
                            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                            sampler_position=self.sampler.position(iteration * self.samples_per_step),
                            best_miou=self.best_miou, extra={"nonfinite_steps": self.nonfinite_total,
                                                             "trackers": self.files.trackers.run_ids(),
                                                             **(ema_state(self.ema) if self.ema is not None else {})})
        finally:
            self.requests.saving = False


class RunFiles:
    """What rank 0 writes: train.log lines, metrics.jsonl, TensorBoard, checkpoints; the experiment trackers
    (``seg.engine.trackers``, set by the trainer) get every scalar TensorBoard gets."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_iteration: int):
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self.checkpoints = run_dir / "checkpoints"
        self.writer = self.log_handler = None
        self.trackers, self.finished = Trackers(), False
        if enabled:
            try:
                self._open(resumed_iteration)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                self._refuse(error.filename or run_dir)

    def _open(self, resumed_iteration: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for folder in (self.run_dir, self.checkpoints):  # fail now, not at the first checkpoint
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                self._refuse(folder)
        self._attach_log_file(self.run_dir / "train.log")
        self._truncate_metrics_after(resumed_iteration)
        remove_partial_saves(self.checkpoints)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resumed_iteration + 1)
        self._thread_excepthook, threading.excepthook = threading.excepthook, self._quiet_full_disk

    def _quiet_full_disk(self, args) -> None:
        """Print no traceback for a full disk in TensorBoard's writer thread: the writer raises the same error
        at its next call in the training loop, and ``train`` reports it in one line."""
        if not (isinstance(args.exc_value, OSError) and is_disk_full(args.exc_value)):
            self._thread_excepthook(args)

    def _refuse(self, path) -> None:
        raise RunFolderError(f"cannot write into the run folder {self.run_dir} ({path} is read-only): make it writable "
                             f"(chmod -R u+w {self.run_dir}), or copy the run and resume from the copy's "
                             "checkpoints/last.pt")

    def _attach_log_file(self, path: Path) -> None:
        """Log to ``train.log`` unless a handler (Hydra's job log) already writes there."""
        root = logging.getLogger()
        if not any(getattr(h, "baseFilename", None) == str(path.resolve()) for h in root.handlers):
            self.log_handler = logging.FileHandler(path)
            self.log_handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            root.addHandler(self.log_handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def _truncate_metrics_after(self, iteration: int) -> None:
        """On resume, drop evaluations logged after the checkpoint: they will be recomputed.

        A last line cut short (a kill or a full disk while appending) is dropped with a warning; a broken line
        before it is not something this program wrote, and is an error naming it.
        """
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                logged_at = record["iter"]
            except (ValueError, TypeError, KeyError):
                if number == len(lines):
                    log.warning("%s: dropping an incomplete last line (a write cut short): %r", self.metrics_path,
                                line[:60])
                    continue
                raise RunFolderError(f"{self.metrics_path} line {number} is not a JSON object with an \"iter\" "
                                     f"key: {line[:60]!r}; delete that line and resume again") from None
            if logged_at <= iteration:
                kept.append(line)
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def record(self, error: Exception, level: int = logging.ERROR) -> None:
        """Write an error that ends the run into this run's own train.log (the script prints it on the console
        and records it in Hydra's log)."""
        if self.log_handler is not None:
            record_in_log_files(error, [self.log_handler], level)

    def scalars(self, values: Mapping[str, float], iteration: int) -> None:
        values = {key: value for key, value in values.items() if value is not None}
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, iteration)
        self.trackers.scalars(values, iteration)

    def finish(self, best: Path) -> None:
        """The run completed: the trackers get the best checkpoint (where asked) and close as finished."""
        self.trackers.artifact(best)
        self.finished = True

    def metrics(self, record: Mapping) -> None:
        if self.enabled:
            try:
                with self.metrics_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as error:  # a write's ENOSPC names no file: name it here
                if not is_disk_full(error):
                    raise
                raise self.disk_full(self.metrics_path) from None

    def disk_full(self, path: Path) -> DiskFullError:
        return DiskFullError(f"disk full: could not write {path}; the checkpoints in {self.checkpoints} are as last "
                             f"saved ({free_space_hint(self.checkpoints)})")

    def images(self, tag: str, image: np.ndarray, iteration: int) -> None:
        if self.writer:
            self.writer.add_image(tag, image, iteration, dataformats="HWC")

    def close(self) -> None:
        try:
            if self.writer:
                self.writer.close()
        except OSError as error:  # a full disk: the error that ended the run (or its result) matters more
            if not is_disk_full(error):
                raise
            log.warning("TensorBoard's last events were not written (disk full): %s", error)
        finally:
            self.trackers.close(self.finished)
            if self.writer:
                threading.excepthook = self._thread_excepthook
            if self.log_handler is not None:
                logging.getLogger().removeHandler(self.log_handler)
                self.log_handler.close()
