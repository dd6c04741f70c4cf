"""``run_benchmark``: validate the configuration, run every phase in order (data loader, our model, micro-benchmarks,
torchvision), free memory between them, write the JSON result and print the table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from seg.benchmark.config import validate_benchmark
from seg.benchmark.hardware import device_info, peak_tflops, versions
from seg.benchmark.measure import (bench_inference, bench_loader, bench_real_run, bench_train, build_loader,
                                   fake_batch, make_train_step)
from seg.benchmark.micro import bench_conv3x3, bench_image_pool
from seg.benchmark.model_info import aspp_rates, conv3x3_dilations, count_flops, num_params
from seg.benchmark.schema import SCHEMA, TRAIN_FLOPS_MULTIPLIER, compute_ratios, empty_data, empty_flops, empty_micro
from seg.benchmark.table import format_table
from seg.benchmark.timing import free
from seg.benchmark.torchvision_ref import bench_torchvision
from seg.config import crop_hw, dataset_kwargs, model_kwargs, to_plain
from seg.data import build_dataset
from seg.engine.device import place, resolve_amp, resolve_device
from seg.engine.losses import make_loss
from seg.models import build_model

log = logging.getLogger("seg.benchmark")

DEFAULT_COUNTS = {"cuda": (10, 50), "cpu": (2, 5)}  # (warmup, steps) when the config leaves them null


def _dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return str(dtype).replace("torch.", "") if dtype is not None else None


def run_benchmark(config: Any, run_dir: Optional[Path] = None, echo: bool = True) -> Dict:
    """Run every measurement for ``config`` (``configs/benchmark.yaml`` layout); return and write the results.

    ``cpu_threads`` (if set) applies ``torch.set_num_threads`` for the run and is restored afterwards.
    """
    cfg = to_plain(config, throw_on_missing=False)
    validate_benchmark(cfg)
    threads = torch.get_num_threads()
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg["cpu_threads"]))
    try:
        return _run(cfg, run_dir, echo)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Dict, run_dir: Optional[Path], echo: bool) -> Dict:
    device_type = resolve_device(cfg["device"])
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    amp_dtype = resolve_amp(cfg["amp"], device_type, key="amp")
    channels_last = device_type == "cuda" if cfg["channels_last"] == "auto" else bool(cfg["channels_last"])
    default_warmup, default_steps = DEFAULT_COUNTS[device_type]
    warmup = default_warmup if cfg.get("warmup") is None else int(cfg["warmup"])
    steps = default_steps if cfg.get("steps") is None else int(cfg["steps"])
    batch = int(cfg["batch_size"])
    eval_batch = int(cfg.get("eval_batch_size") or batch)
    crop = crop_hw(cfg["crop_size"], "crop_size")
    eval_hw = crop_hw(cfg["eval_size"], "eval_size")
    train_cfg = cfg["train"]
    dataset_cfg = cfg["dataset"]
    ignore_index = int(dataset_cfg.get("ignore_index", 255))
    compare = cfg.get("compare")
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer: fixed shapes
    torch.manual_seed(int(cfg["seed"]))

    data = empty_data()
    # The dataset is read for the loader figures, or for its class count when the config does not give it.
    timing_data = cfg["data_steps"] > 0
    num_classes = dataset_cfg.get("num_classes")
    train_set = None
    if timing_data or not isinstance(num_classes, int):
        train_set = build_dataset(**dataset_kwargs(dataset_cfg))
        num_classes = train_set.num_classes
    peak = peak_tflops(device, amp_dtype, cfg.get("peak_tflops"))
    settings = {
        "backbone": cfg["backbone"]["name"], "os": cfg["os"], "head": cfg["model"]["head"],
        "aux_loss": bool(cfg["model"]["aux_loss"]), "batch_size": batch, "crop_size": list(crop),
        "num_classes": num_classes, "amp": cfg["amp"], "amp_dtype": _dtype_name(amp_dtype),
        "channels_last": channels_last, "compile": bool(cfg["compile"]), "warmup": warmup,
        "steps": steps, "eval_size": list(eval_hw), "eval_os": cfg["eval_os"], "eval_batch_size": eval_batch,
        "timer": "cuda_events" if device_type == "cuda" else "perf_counter",
        "memory": "cuda_max_memory_allocated" if device_type == "cuda" else "process_peak_rss",
        "tf32": bool(device_type == "cuda" and torch.backends.cudnn.allow_tf32),
    }
    log.info("benchmark: %s", settings)

    # Data loader alone, before any model exists.
    if timing_data:
        loader = build_loader(train_set, batch, crop, cfg["num_workers"], train_cfg, int(cfg["seed"]), device)
        data.update(dataset=dataset_cfg["name"], num_workers=cfg["num_workers"], batches=cfg["data_steps"],
                    **bench_loader(loader, cfg["data_steps"], max(1, cfg["num_workers"])))
        del loader
        free(device)

    # Our model: FLOPs, training step, real run, inference.
    kwargs = model_kwargs(cfg, num_classes, pretrained="none")
    flops = empty_flops()
    train_count = count_flops(lambda: build_model(**kwargs), crop, backward=True)
    eval_count = count_flops(lambda: build_model(**kwargs), eval_hw, output_stride=cfg["eval_os"])
    flops.update(forward_per_image=train_count["forward"], train_per_image=TRAIN_FLOPS_MULTIPLIER *
                 train_count["forward"], train_per_image_counted=train_count["forward_backward"],
                 eval_forward_per_image=eval_count["forward"])
    model = build_model(**kwargs)
    model_info = {"params": num_params(model), "aspp_rates": aspp_rates(model),
                  "dilations": conv3x3_dilations(model.backbone),
                  "aspp_input_shape": [batch, *train_count["aspp_input"][1:]],
                  "eval_aspp_input_shape": [eval_batch, *eval_count["aspp_input"][1:]], "eval_aspp_rates": None}

    base = place(model, device, channels_last)
    trained = torch.compile(base) if cfg["compile"] else base
    base.train()
    step, scheduler = make_train_step(trained, train_cfg, make_loss(train_cfg, ignore_index), device, amp_dtype,
                                      channels_last)
    images, labels = fake_batch(batch, crop, num_classes, device, ignore_index)

    def our_step():
        step(images, labels)
        scheduler.step()

    train = bench_train(our_step, device, warmup, steps, batch, flops["train_per_image"], peak["tflops"])
    if timing_data:
        loader = build_loader(train_set, batch, crop, cfg["num_workers"], train_cfg, int(cfg["seed"]), device)
        data.update(bench_real_run(loader, step, scheduler, device, warmup, steps, batch))
        del loader
    del step, scheduler, trained
    free(device)
    base.set_output_stride(cfg["eval_os"])
    model_info["eval_aspp_rates"] = aspp_rates(base)
    inference = bench_inference(base, device, amp_dtype, eval_hw, eval_batch, warmup, steps,
                                flops["eval_forward_per_image"], peak["tflops"])
    del base, model
    free(device)

    # Micro-benchmarks on the real ASPP input shapes.
    micro = empty_micro()
    if cfg.get("micro", True):
        dtype = amp_dtype or torch.float32
        dtype_name = _dtype_name(dtype)
        shape = model_info["aspp_input_shape"]
        micro["train"] = {"shape": shape, "dtype": dtype_name, "conv3x3": bench_conv3x3(
            shape, model_info["aspp_rates"], device, dtype, channels_last, warmup, steps, backward=True)}
        eval_shape = model_info["eval_aspp_input_shape"]
        micro["eval"] = {"shape": eval_shape, "dtype": dtype_name, "conv3x3": bench_conv3x3(
            eval_shape, model_info["eval_aspp_rates"], device, dtype, channels_last, warmup, steps, backward=False)}
        micro["image_pool"] = bench_image_pool(shape, device, dtype, channels_last, warmup, steps)
        free(device)

    torchvision_result = None
    ratios = None
    if compare == "torchvision":
        torchvision_result = bench_torchvision(cfg, device, amp_dtype, channels_last, num_classes, crop, eval_hw,
                                               batch, eval_batch, warmup, steps, images, labels, peak, ignore_index,
                                               model_info)
        ratios = compute_ratios(train, inference, flops, model_info, torchvision_result, device)
    del images, labels
    free(device)

    result = {
        "schema": SCHEMA,
        "device": device_info(device),
        "versions": versions(),
        "config": cfg,
        "settings": settings,
        "model": model_info,
        "flops": flops,
        "peak": peak,
        "train": train,
        "inference": inference,
        "data": data,
        "micro": micro,
        "torchvision": torchvision_result,
        "ratios": ratios,
        "output": None,
    }
    if cfg.get("output"):
        path = Path(cfg["output"])
        if not path.is_absolute():
            path = Path(run_dir or ".") / path
        path.parent.mkdir(parents=True, exist_ok=True)
        result["output"] = str(path)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if echo:
        print(format_table(result))
    return result
