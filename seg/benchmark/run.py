"""``run_benchmark``: check the configuration, run the phases in order (data loader, our model's training step,
inference, micro-benchmarks, torchvision), write the JSON result and print the table.

The benchmark's configuration boundary: what it calls takes plain arguments. Each phase keeps what it builds in
its own function, so that memory is free again when the next phase starts.
"""

from __future__ import annotations

import json
import logging
import platform
from functools import reduce
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from seg import config
from seg.benchmark import measure
from seg.benchmark.reference import BACKBONES, bench_torchvision
from seg.data import build_dataset
from seg.data.loader import build_train_loader
from seg.engine.device import place, resolve_amp, resolve_device, versions
from seg.engine.sampler import ResumableSampler
from seg.models import build_model

log = logging.getLogger("seg.benchmark")

DEFAULT_COUNTS = {"cuda": (10, 50), "cpu": (2, 5)}  # (warmup, steps) when the configuration leaves them null
COUNTS = {"batch_size": 1, "num_workers": 0, "data_steps": 0, "eval_batch_size": 1, "warmup": 0, "steps": 1,
          "cpu_threads": 1}  # integer keys and their minimum (null allowed but for the first three)
DATA_KEYS = ("dataset", "num_workers", "batches", "samples_per_s", "first_batch_s", "run_steps", "wait_share",
             "wait_ms_per_step", "run_images_per_s")
POOL_KEYS = ("shape", "expand_fwd_ms", "interpolate_fwd_ms", "expand_fwd_bwd_ms", "interpolate_fwd_bwd_ms")
ROWS = [  # label, figure (torchvision's at the same path or at THEIRS[ratio key]), ratio key, digits[, scale]
    ("train step ms (median)", "train.step_ms", "train_step_ms", 2),
    ("train images/s", "train.images_per_s", "train_images_per_s", 1),
    ("train images/s (wall)", "train.wall_images_per_s", "train_wall_images_per_s", 1),
    ("train images/s, torchvision model in our TrainStep", "train.images_per_s", "same_step_images_per_s", 1),
    ("train first step s (compile/autotune)", "train.first_step_s", None, 2),
    ("train peak memory MiB", "train.peak_memory_mib", "train_peak_memory_mib", 0),
    ("train TFLOP/s (3x forward)", "train.tflops", None, 3),
    ("train fraction of peak", "train.peak_fraction", None, 3),
    ("inference batch ms (median)", "inference.batch_ms", "inference_batch_ms", 2),
    ("inference images/s", "inference.images_per_s", "inference_images_per_s", 1),
    ("inference latency ms (batch 1)", "inference.latency_ms", "latency_ms", 2),
    ("inference peak memory MiB", "inference.peak_memory_mib", "inference_peak_memory_mib", 0),
    ("inference TFLOP/s", "inference.tflops", None, 3),
    ("inference fraction of peak", "inference.peak_fraction", None, 3),
    ("forward GFLOPs / image (train crop)", "flops.forward_per_image", "forward_flops_per_image", 1, 1e-9),
    ("fwd+bwd GFLOPs / image (counted)", "flops.train_per_image_counted", None, 1, 1e-9),
    ("forward GFLOPs / image (eval size, OS)", "flops.eval_forward_per_image", "eval_forward_flops_per_image", 1, 1e-9),
    ("params (M)", "model.params", "params", 2, 1e-6),
    ("data loader samples/s ({dataset}, {num_workers} workers, no model)", "data.samples_per_s", None, 1),
    ("real run: share of step time waiting for data", "data.wait_share", None, 3),
    ("real run images/s (loader + TrainStep)", "data.run_images_per_s", None, 1),
]
THEIRS = {"same_step_images_per_s": "train_same_step.images_per_s", "params": "params"}


def rewrite_argv(argv: Sequence[str]) -> List[str]:
    """Accept ``--compare [torchvision]`` / ``--compare=torchvision`` (argparse style) as Hydra's ``compare=...``."""
    out: List[str] = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--compare" and "=" not in arg and not arg.startswith("-"):
            out[-1] = f"compare={arg}"
        elif arg == "--compare" or arg.startswith("--compare="):
            out.append("compare=" + (arg[len("--compare="):] or "torchvision"))
        else:
            out.append(arg)
    return out


def validate_benchmark(cfg: Mapping) -> None:
    """Check every key before any work starts: the benchmark's own, then those it shares with ``train.yaml``."""
    config.choice(cfg["amp"], "amp", config.AMP_MODES)
    config.choice(cfg["channels_last"], "channels_last", ("auto", True, False))
    for key, allowed in (("compile", (True, False)), ("micro", (True, False)), ("compare", (None, "torchvision"))):
        config.choice(cfg[key], key, allowed)
    config.check_output_stride(cfg["eval_os"], "eval_os")
    for key, minimum in COUNTS.items():
        if cfg[key] is not None or key in ("batch_size", "num_workers", "data_steps"):
            config.number(cfg[key], key, minimum=minimum, strict=False, integer=True)
    if cfg["peak_tflops"] is not None:
        config.number(cfg["peak_tflops"], "peak_tflops")
    config.crop_hw(cfg["crop_size"], "crop_size")
    config.crop_hw(cfg["eval_size"], "eval_size")
    config.validate_train(cfg)
    if cfg["compare"] and cfg["backbone"]["name"] not in BACKBONES:
        raise config.ConfigError(f"compare=torchvision supports backbone {list(BACKBONES)}, got "
                                 f"{cfg['backbone']['name']!r}: torchvision has no DeepLabV3 for resnet18/34")
    if cfg["compare"] and cfg["model"]["head"] != "deeplabv3":
        raise config.ConfigError(f"compare=torchvision needs model.head=deeplabv3, got {cfg['model']['head']!r}")
    if cfg["data_steps"] > 0 and cfg["dataset"].get("root") == "???":
        raise config.ConfigError("dataset.root is required for the data-loader figures: set dataset.root=... "
                                 "(or data_steps=0 to skip them)")


def run_benchmark(cfg: Any, run_dir: Optional[Path] = None, echo: bool = True) -> Dict:
    """Every figure for ``config`` (the ``configs/benchmark.yaml`` layout, OmegaConf or a plain dict): returned,
    written to ``output`` (relative to ``run_dir``) and, with ``echo``, printed as a table. ``cpu_threads`` sets
    ``torch.set_num_threads`` for the run only."""
    cfg = config.to_plain(cfg, throw_on_missing=False)
    validate_benchmark(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["cpu_threads"] or threads)
    try:
        result = _run(cfg)
    finally:
        torch.set_num_threads(threads)
    write_result(result, cfg["output"], run_dir)
    if echo:
        print(format_table(result))
    return result


def _run(cfg: Dict) -> Dict:
    train_set, num_classes = None, cfg["dataset"].get("num_classes")
    if cfg["data_steps"] > 0 or not isinstance(num_classes, int):  # the loader figures, or the class count
        train_set = build_dataset(**config.dataset_kwargs(cfg["dataset"]))
        num_classes = train_set.num_classes
    s = make_setup(cfg, num_classes)
    torch.backends.cudnn.benchmark = s.device.type == "cuda"  # as the trainer: fixed shapes
    torch.manual_seed(cfg["seed"])
    result = {"schema": "seg.benchmark/1", "device": measure.device_info(s.device),
              "versions": {"python": platform.python_version(), **versions()}, "config": cfg,
              "settings": settings(cfg, s), "peak": s.peak, "data": loader_phase(cfg, s, train_set)}
    log.info("benchmark: %s", result["settings"])
    kwargs = config.model_kwargs(cfg, num_classes, pretrained="none")
    result["model"], result["flops"] = measure.describe(
        lambda: build_model(**kwargs), lambda: _restrided(build_model(**kwargs), cfg["eval_os"]), s)
    model = place(build_model(**kwargs), s.device, s.channels_last).train()
    result["train"] = train_phase(cfg, s, model, result, train_set)
    result["inference"] = inference_phase(cfg, s, model, result["flops"])
    del model
    result["micro"] = micro_phase(cfg, s, result["model"])
    result["torchvision"] = bench_torchvision(cfg, s, result["model"]) if cfg["compare"] else None
    result.update(ratios=ratios(result) if cfg["compare"] else None, output=None)
    return result


def make_setup(cfg: Mapping, num_classes: int) -> measure.Setup:
    device_type = resolve_device(cfg["device"])
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    amp_dtype = resolve_amp(cfg["amp"], device_type, key="amp")
    warmup, steps = DEFAULT_COUNTS[device_type]
    return measure.Setup(
        device=device, amp_dtype=amp_dtype, peak=measure.peak_tflops(device, amp_dtype, cfg["peak_tflops"]),
        channels_last=device_type == "cuda" if cfg["channels_last"] == "auto" else cfg["channels_last"],
        warmup=warmup if cfg["warmup"] is None else cfg["warmup"], steps=cfg["steps"] or steps,
        batch=cfg["batch_size"], crop=config.crop_hw(cfg["crop_size"], "crop_size"),
        eval_batch=cfg["eval_batch_size"] or cfg["batch_size"], eval_hw=config.crop_hw(cfg["eval_size"], "eval_size"),
        num_classes=num_classes, ignore_index=cfg["dataset"].get("ignore_index", 255))


def settings(cfg: Mapping, s: measure.Setup) -> Dict:
    cuda = s.device.type == "cuda"
    return {"backbone": cfg["backbone"]["name"], "os": cfg["os"], "head": cfg["model"]["head"],
            "aux_loss": cfg["model"]["aux_loss"], "batch_size": s.batch, "crop_size": list(s.crop),
            "num_classes": s.num_classes, "amp": cfg["amp"], "channels_last": s.channels_last,
            "amp_dtype": s.amp_dtype and str(s.amp_dtype).removeprefix("torch."), "compile": cfg["compile"],
            "warmup": s.warmup, "steps": s.steps,
            "eval_size": list(s.eval_hw), "eval_os": cfg["eval_os"], "eval_batch_size": s.eval_batch,
            "timer": "cuda_events" if cuda else "perf_counter",
            "memory": "cuda_max_memory_allocated" if cuda else "process_peak_rss",
            "tf32": cuda and torch.backends.cudnn.allow_tf32}


def _restrided(model: torch.nn.Module, output_stride: int) -> torch.nn.Module:
    model.set_output_stride(output_stride)
    return model


def _loader(cfg: Mapping, s: measure.Setup, train_set):
    """The trainer's DataLoader (its transform, sampler, workers, pinning, prefetching) at the benchmark's shapes."""
    t = cfg["train"]
    return build_train_loader(train_set, ResumableSampler(len(train_set), cfg["seed"]), s.batch, s.crop,
                              tuple(t["scale_range"]), t["hflip"], t["color_jitter"], cfg["num_workers"],
                              pin_memory=s.device.type == "cuda", seed=cfg["seed"])


def loader_phase(cfg: Mapping, s: measure.Setup, train_set) -> Dict:
    """The loader alone, before any model exists (every value null with ``data_steps=0``)."""
    data, batches, workers = dict.fromkeys(DATA_KEYS), cfg["data_steps"], cfg["num_workers"]
    if batches:
        first, _, total = measure.time_loader(_loader(cfg, s, train_set), max(1, workers), batches, s)
        data.update(dataset=cfg["dataset"]["name"], num_workers=workers, batches=batches,
                    samples_per_s=batches * s.batch / total, first_batch_s=first)
    return data


def train_phase(cfg: Mapping, s: measure.Setup, model: torch.nn.Module, result: Dict, train_set) -> Dict:
    """Our training step on a fixed batch (``train``), then fed by the real loader (``data``'s run figures)."""
    iteration = measure.train_step(torch.compile(model) if cfg["compile"] else model, cfg["train"], s)
    images, labels = measure.fake_batch(s.batch, s.crop, s)
    train = measure.time_train(lambda: iteration(images, labels), s, result["flops"]["train_per_image"])
    if cfg["data_steps"]:
        _, waited, total = measure.time_loader(_loader(cfg, s, train_set), max(s.warmup, 1), s.steps, s, iteration)
        result["data"].update(run_steps=s.steps, wait_share=waited / total, wait_ms_per_step=waited / s.steps * 1e3,
                              run_images_per_s=s.steps * s.batch / total)
    return train


def inference_phase(cfg: Mapping, s: measure.Setup, model: torch.nn.Module, flops: Mapping) -> Dict:
    """``segment`` with the trained weights re-strided to ``eval_os`` (as the paper evaluates), run eagerly as
    ``evaluate`` runs it."""
    return measure.time_inference(_restrided(model, cfg["eval_os"]).eval(), s, flops["eval_forward_per_image"])


def micro_phase(cfg: Mapping, s: measure.Setup, model: Mapping) -> Dict:
    """Atrous micro-benchmarks on our ASPP input shapes in the AMP dtype and memory format (null: ``micro=false``)."""
    if not cfg["micro"]:
        conv = dict.fromkeys(("shape", "dtype", "conv3x3"))
        return {"train": conv, "eval": dict(conv), "image_pool": dict.fromkeys(POOL_KEYS)}
    dtype = s.amp_dtype or torch.float32
    result = {}
    for part, prefix in (("train", ""), ("eval", "eval_")):
        shape, rates = model[f"{prefix}aspp_input_shape"], model[f"{prefix}aspp_rates"]
        result[part] = {"shape": shape, "dtype": str(dtype).removeprefix("torch."),
                        "conv3x3": measure.time_conv3x3(shape, rates, s, dtype, backward=part == "train")}
    return {**result, "image_pool": measure.time_image_pool(model["aspp_input_shape"], s, dtype)}


def _get(section: Optional[Mapping], path: str) -> Any:
    return reduce(lambda d, k: d.get(k) if d else None, path.split("."), section)


def ratios(result: Mapping) -> Dict:
    """ours / torchvision for every table row with a ratio key. Memory ratios are null on the CPU: the peak RSS
    cannot be reset between the two models in one process."""
    cuda, tv = result["device"]["type"] == "cuda", result["torchvision"]
    pairs = {key: (_get(result, path), _get(tv, THEIRS.get(key, path))) for _, path, key, *_ in ROWS if key}
    return {key: a / b if a is not None and b and (cuda or "memory" not in key) else None
            for key, (a, b) in pairs.items()}


def write_result(result: Dict, output: Optional[str], run_dir: Optional[Path]) -> None:
    """Write the JSON result to ``output`` (relative to ``run_dir``) and record the path in it; null: no file."""
    if output:
        path = Path(output) if Path(output).is_absolute() else Path(run_dir or ".") / output
        path.parent.mkdir(parents=True, exist_ok=True)
        result["output"] = str(path)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_table(result: Mapping) -> str:
    """The human-readable summary printed on stdout."""
    s, tv, peak, dev = result["settings"], result["torchvision"], result["peak"], result["device"]
    lines = [f"DeepLabV3 benchmark: {s['backbone']} OS{s['os']} {s['head']}, batch {s['batch_size']}, crop "
             f"{s['crop_size'][0]}x{s['crop_size'][1]}, {s['num_classes']} classes",
             f"device {dev['name']} ({dev['type']}), amp {s['amp_dtype'] or 'off'}, channels_last "
             f"{str(s['channels_last']).lower()}, compile {str(s['compile']).lower()}, warmup {s['warmup']}, "
             f"steps {s['steps']} (medians; timer {s['timer']}; memory {s['memory']})",
             f"inference: {s['eval_size'][0]}x{s['eval_size'][1]} at OS{s['eval_os']}, batch {s['eval_batch_size']};"
             f" peak: {peak['name'] or 'unknown'} {peak['precision']} {_fmt(peak['tflops'], 1)} TFLOP/s", ""]
    rows = [["figure", "ours", "torchvision", "ours/tv"]]
    for label, path, key, digits, *scale in ROWS:
        figures = [_get(result, path), _get(tv, THEIRS.get(key, path))]
        if figures != [None, None] and (tv or key != "same_step_images_per_s"):
            rows.append([label.format(**result["data"]), *(_fmt(v and v * (scale or [1])[0], digits) for v in figures),
                         _fmt((result["ratios"] or {}).get(key), 3)])
    width = max(len(row[0]) for row in rows) + 2
    lines += [f"{row[0]:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(row[1:4 if tv else 2], (14, 14, 10)))
              for row in rows]
    lines.insert(5, "-" * len(lines[4]))
    lines += _micro_lines(result["micro"])
    if tv:
        ours = result["model"]
        lines += ["", f"torchvision: {tv['builder']}", f"ASPP rates {tv['aspp_rates']} (ours {ours['aspp_rates']}); "
                  f"layer4 dilations {tv['dilations']['layer4']} (ours {ours['dilations']['layer4']})"]
    return "\n".join(lines + (["", f"results: {result['output']}"] if result["output"] else []))


def _micro_lines(micro: Mapping) -> List[str]:
    """A line per shape: ms per dilation (fwd / fwd+bwd) and, for the atrous ones, x the time at dilation 1."""
    if not micro["train"]["conv3x3"]:
        return []
    lines = [""]
    for part in ("train", "eval"):
        cells = []
        for r in micro[part]["conv3x3"]:
            ms = " / ".join(_fmt(r[k], 3) for k in ("fwd_ms", "fwd_bwd_ms") if r[k] is not None)
            x = " / ".join("x" + _fmt(r[k]) for k in ("fwd_ratio", "fwd_bwd_ratio") if r[k] is not None)
            cells.append(f"d{r['dilation']} {ms}" + (f" ({x})" if r["dilation"] != 1 else ""))
        lines.append(f"3x3 conv on {'x'.join(map(str, micro[part]['shape']))} ({part} shape, ms): " + "; ".join(cells))
    pool = {key: _fmt(value, 3) for key, value in micro["image_pool"].items() if key != "shape"}
    return lines + [f"image pooling 1x1 -> {'x'.join(map(str, micro['image_pool']['shape'][2:]))} + concat (ms, fwd "
                    f"/ fwd+bwd): expand {pool['expand_fwd_ms']} / {pool['expand_fwd_bwd_ms']}; interpolate "
                    f"{pool['interpolate_fwd_ms']} / {pool['interpolate_fwd_bwd_ms']}"]
