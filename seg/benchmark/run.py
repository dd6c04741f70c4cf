"""``run_benchmark``: the benchmark's configuration boundary (what it calls takes plain arguments). It runs the phases
in order (data loader, training step, inference, micro-benchmarks, torchvision), each in its own function so that its
memory is free when the next starts, writes the JSON and prints the table."""

import json
import platform
import textwrap
from functools import partial, reduce
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from seg import config
from seg.benchmark import measure
from seg.benchmark.accuracy import checkpoint_rows, exported_rows
from seg.benchmark.backends import backends_phase, exported_variants, format_rows, time_variants
from seg.data import build_dataset
from seg.data.base import label_space
from seg.data.loader import build_train_loader
from seg.data.transforms import normalize
from seg.deployment.sources import is_exported
from seg.engine.checkpoint import checkpoint_in
from seg.engine.device import place, resolve_amp, resolve_device, versions
from seg.engine.sampler import ResumableSampler
from seg.models import build_model
from seg.outputs import check_outputs

DEFAULT_COUNTS = {"cuda": (10, 50), "cpu": (2, 5)}  # (warmup, steps) when the configuration leaves them null
DATA_KEYS = ("dataset", "num_workers", "batches", "samples_per_s", "first_batch_s", "run_steps", "wait_share",
             "wait_ms_per_step", "run_images_per_s")
POOL_KEYS = ("shape", "expand_fwd_ms", "interpolate_fwd_ms", "expand_fwd_bwd_ms", "interpolate_fwd_bwd_ms")
UNITS = {"ms": (2, 1), "s": (2, 1), "/s": (1, 1), "MiB": (0, 1), "x": (3, 1), "G": (1, 1e-9), "M": (2, 1e-6)}
ROWS = [  # label, figure (torchvision's at the same path or at THEIRS[ratio key]), unit (UNITS: digits, scale), ratio
    ("train step ms (median)", "train.step_ms", "ms", "train_step_ms"),
    ("train images/s", "train.images_per_s", "/s", "train_images_per_s"),
    ("train images/s (wall)", "train.wall_images_per_s", "/s", "train_wall_images_per_s"),
    ("train images/s, torchvision model in our TrainStep", "train.images_per_s", "/s", "same_step_images_per_s"),
    ("train first step s (compile/autotune)", "train.first_step_s", "s", None),
    ("train peak memory MiB", "train.peak_memory_mib", "MiB", "train_peak_memory_mib"),
    ("train TFLOP/s (3x forward)", "train.tflops", "x", None),
    ("train fraction of peak", "train.peak_fraction", "x", None),
    ("inference batch ms (median)", "inference.batch_ms", "ms", "inference_batch_ms"),
    ("inference images/s", "inference.images_per_s", "/s", "inference_images_per_s"),
    ("inference latency ms (batch 1)", "inference.latency_ms", "ms", "latency_ms"),
    ("inference peak memory MiB", "inference.peak_memory_mib", "MiB", "inference_peak_memory_mib"),
    ("inference TFLOP/s", "inference.tflops", "x", None),
    ("inference fraction of peak", "inference.peak_fraction", "x", None),
    ("forward GFLOPs / image (train crop)", "flops.forward_per_image", "G", "forward_flops_per_image"),
    ("fwd+bwd GFLOPs / image (counted)", "flops.train_per_image_counted", "G", None),
    ("forward GFLOPs / image (eval size, OS)", "flops.eval_forward_per_image", "G", "eval_forward_flops_per_image"),
    ("params (M)", "model.params", "M", "params"),
    ("data loader samples/s ({dataset}, {num_workers} workers, no model)", "data.samples_per_s", "/s", None),
    ("real run: share of step time waiting for data", "data.wait_share", "x", None),
    ("real run images/s (loader + TrainStep)", "data.run_images_per_s", "/s", None),
]
THEIRS = {"same_step_images_per_s": "train_same_step.images_per_s", "params": "params"}


def validate_benchmark(cfg: Mapping) -> None:
    """Check every key before any work starts: the benchmark's own, then those it shares with ``train.yaml``."""
    for key, allowed in (("amp", config.AMP_MODES), ("channels_last", ("auto", True, False)),
                         ("compile", (True, False)), ("micro", (True, False)), ("compare", (None, "torchvision"))):
        config.choice(cfg[key], key, allowed)
    config.check_output_stride(cfg["eval_os"], "eval_os")
    for key, minimum in (("batch_size", 1), ("num_workers", 0), ("data_steps", 0)):
        config.number(cfg[key], key, minimum, strict=False, integer=True)
    for key, minimum in (("warmup", 0), ("steps", 1), ("eval_batch_size", 1), ("cpu_threads", 1),
                         ("eval_images", 1)):  # null: a default
        if cfg[key] is not None:
            config.number(cfg[key], key, minimum, strict=False, integer=True)
    for key, allowed in (("backends", config.BACKENDS), ("precisions", config.PRECISIONS)):
        values = cfg[key]
        if not isinstance(values, list) or not all(value in allowed for value in values):
            raise config.ConfigError(f"{key} must be a list of {', '.join(allowed)}, got {values!r}")
    if cfg["peak_tflops"] is not None:
        config.number(cfg["peak_tflops"], "peak_tflops")
    for key in ("crop_size", "eval_size"):
        config.crop_hw(cfg[key], key)
    if cfg["sizes"] is not None:
        if not isinstance(cfg["sizes"], list) or not cfg["sizes"]:
            raise config.ConfigError(f"sizes must be null or a list of [height, width], got {cfg['sizes']!r}")
        for size in cfg["sizes"]:
            config.crop_hw(size, "sizes")
    if cfg["ckpt"] and not cfg["backends"]:
        raise config.ConfigError("ckpt= scores the deployment table's rows: add backends=[torch] (eager torch "
                                 "only) or backends=[onnxruntime,openvino]")
    if cfg["ckpt"] and is_exported(cfg["ckpt"]) and not set(cfg["backends"]) - {"torch"}:
        raise config.ConfigError(f"ckpt={cfg['ckpt']} is an exported model, which eager torch cannot run (it has no "
                                 "torch weights): backends=[onnxruntime,openvino], or ckpt= the checkpoint")
    config.validate_train(cfg)
    if cfg["compare"] and (config.backbone_name(cfg) not in measure.BACKBONES or cfg["model"]["head"] != "deeplabv3"):
        raise config.ConfigError(f"compare=torchvision supports backbone {list(measure.BACKBONES)} and model.head="
                                 f"deeplabv3, got {config.backbone_name(cfg)!r} and {cfg['model']['head']!r} "
                                 "(torchvision has no DeepLabV3 for resnet18/34, timm encoders nor DeepLabV3+)")


def run_benchmark(cfg: Any, run_dir: Optional[Path] = None, echo: bool = True) -> Dict:
    """Every figure for ``cfg`` (the ``configs/benchmark.yaml`` layout, OmegaConf or a plain dict): returned, written
    to ``output`` (relative to ``run_dir``) and, with ``echo``, printed as a table."""
    cfg = config.to_plain(cfg, throw_on_missing=cfg["data_steps"] != 0)  # dataset.root: only for the loader figures
    validate_benchmark(cfg)
    if cfg["output"]:  # before any work: the file must be free, a benchmark's own, or overwrite=true
        check_outputs([Path(run_dir or ".") / cfg["output"]], {"dataset.root": cfg["dataset"].get("root")},
                      "benchmark", config.overwrite_flag(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["cpu_threads"] or threads)  # for the run only
    try:
        result = _run(cfg)
    finally:
        torch.set_num_threads(threads)
    if cfg["output"]:  # relative to run_dir; the path is recorded in the result
        path = Path(run_dir or ".") / cfg["output"]
        path.parent.mkdir(parents=True, exist_ok=True)
        result["output"] = str(path)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if echo:
        print(format_table(result))
    return result


def _run(cfg: Dict) -> Dict:
    train_set, num_classes = None, cfg["dataset"].get("num_classes")
    if cfg["data_steps"] > 0 or not isinstance(num_classes, int):  # the loader figures, or the class count
        train_set = build_dataset(**config.dataset_kwargs(cfg["dataset"]))
        num_classes = train_set.num_classes
    s, settings = make_setup(cfg, num_classes)
    torch.backends.cudnn.benchmark = s.device.type == "cuda"  # as the trainer: fixed shapes
    torch.manual_seed(cfg["seed"])
    result = {"schema": "seg.benchmark/1", "device": measure.device_info(s.device), "config": cfg,
              "versions": {"python": platform.python_version(), **versions()}, "settings": settings, "peak": s.peak,
              "data": {**dict.fromkeys(DATA_KEYS), **data_phase(cfg, s, train_set)}}
    kwargs = config.model_kwargs(cfg, num_classes, pretrained="none")
    result["model"], result["flops"] = measure.describe(
        lambda: build_model(**kwargs), lambda: _restrided(build_model(**kwargs), cfg["eval_os"]), s)
    model = place(build_model(**kwargs), s.device, s.channels_last).train()
    result["train"] = train_phase(cfg, s, model, result, train_set)
    # The trained weights re-strided to eval_os (as the paper evaluates), run eagerly as evaluate runs them.
    result["inference"] = measure.time_inference(_restrided(model, cfg["eval_os"]).eval(), s,
                                                 result["flops"]["eval_forward_per_image"])
    result["inference_backends"] = deployment_phase(cfg, s, model) if cfg["backends"] else None
    del model
    conv = dict.fromkeys(("shape", "dtype", "conv3x3"))
    has_aspp = result["model"]["aspp_rates"] is not None  # the micro-benchmarks time ASPP convolutions
    result["micro"] = measure.time_micro(result["model"], s) if cfg["micro"] and has_aspp else {
        "train": conv, "eval": dict(conv), "image_pool": dict.fromkeys(POOL_KEYS)}
    result["torchvision"] = torchvision_phase(cfg, s, result["model"]) if cfg["compare"] else None
    result.update(ratios=ratios(result) if cfg["compare"] else None, output=None)
    return result


def make_setup(cfg: Mapping, num_classes: int) -> Tuple[measure.Setup, Dict]:
    """The phases' ``Setup`` and the ``settings`` section that records it."""
    device_type = resolve_device(cfg["device"])
    cuda, (warmup, steps) = device_type == "cuda", DEFAULT_COUNTS[device_type]
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    amp_dtype = resolve_amp(cfg["amp"], device_type, key="amp")
    s = measure.Setup(
        device=device, amp_dtype=amp_dtype, peak=measure.peak_tflops(device, amp_dtype, cfg["peak_tflops"]),
        channels_last=cuda if cfg["channels_last"] == "auto" else cfg["channels_last"],
        warmup=warmup if cfg["warmup"] is None else cfg["warmup"], steps=cfg["steps"] or steps,
        batch=cfg["batch_size"], crop=config.crop_hw(cfg["crop_size"], "crop_size"),
        eval_batch=cfg["eval_batch_size"] or cfg["batch_size"], eval_hw=config.crop_hw(cfg["eval_size"], "eval_size"),
        num_classes=num_classes, ignore_index=label_space(num_classes)[0], stats=config.dataset_stats(cfg["dataset"]))
    return s, {"backbone": config.backbone_name(cfg), "os": cfg["os"], "head": cfg["model"]["head"],
               "aux_loss": cfg["model"]["aux_loss"], "batch_size": s.batch, "crop_size": list(s.crop),
               "num_classes": num_classes, "amp": cfg["amp"], "channels_last": s.channels_last,
               "amp_dtype": amp_dtype and str(amp_dtype).removeprefix("torch."), "compile": cfg["compile"],
               "warmup": s.warmup, "steps": s.steps, "eval_size": list(s.eval_hw), "eval_os": cfg["eval_os"],
               "eval_batch_size": s.eval_batch, "timer": "cuda_events" if cuda else "perf_counter",
               "memory": "cuda_max_memory_allocated" if cuda else "process_peak_rss",
               "tf32": cuda and torch.backends.cudnn.allow_tf32}


def deployment_phase(cfg: Mapping, s: measure.Setup, model: torch.nn.Module) -> List[Dict]:
    """The deployment table of ``model`` (random weights, at ``eval_os``); with ``ckpt`` a checkpoint, of its model
    with each row's validation mIoU (the first ``eval_images`` images); with ``ckpt`` an exported file, of that
    file in each runtime, scored on ``dataset``'s validation split."""
    sizes = [config.crop_hw(size, "sizes") for size in cfg["sizes"]] if cfg["sizes"] else None
    if cfg["ckpt"] and is_exported(cfg["ckpt"]):
        path = checkpoint_in(cfg["ckpt"])
        evaluation, stats = exported_rows(path, cfg["dataset"], cfg["eval_images"], s.device)
        return time_variants(exported_variants(path, cfg["backends"], cfg["precisions"], s.device),
                             s._replace(stats=stats), sizes, evaluation)
    evaluation = calibration = None
    if cfg["ckpt"]:
        model, evaluation, calibration, stats = checkpoint_rows(cfg["ckpt"], cfg["eval_os"], cfg["dataset"],
                                                                cfg["eval_images"], s.device)
        s = s._replace(stats=stats)
    return backends_phase(model, s, cfg["backends"], cfg["precisions"], sizes, evaluation, calibration)


def _restrided(model: torch.nn.Module, output_stride: int) -> torch.nn.Module:
    model.set_output_stride(output_stride)
    return model


def data_phase(cfg: Mapping, s: measure.Setup, train_set, step: Optional[Callable] = None) -> Dict:
    """The trainer's DataLoader (its transform, sampler, workers, pinning, prefetching) at the benchmark's shapes:
    alone, before any model exists, or feeding ``step`` (the real run); nothing with ``data_steps=0``."""
    if not cfg["data_steps"]:
        return {}
    t, batches, workers = cfg["train"], cfg["data_steps"], cfg["num_workers"]
    loader = build_train_loader(train_set, ResumableSampler(len(train_set), cfg["seed"]), s.batch, s.crop,
                                tuple(t["scale_range"]), t["hflip"], t["color_jitter"], workers,
                                pin_memory=s.device.type == "cuda", seed=cfg["seed"])
    if step is None:
        first, _, total = measure.time_loader(loader, max(1, workers), batches, s)
        return {"dataset": cfg["dataset"]["name"], "num_workers": workers, "batches": batches,
                "samples_per_s": batches * s.batch / total, "first_batch_s": first}
    _, waited, total = measure.time_loader(loader, max(s.warmup, 1), s.steps, s, step)
    return {"run_steps": s.steps, "wait_share": waited / total, "wait_ms_per_step": waited / s.steps * 1e3,
            "run_images_per_s": s.steps * s.batch / total}


def train_phase(cfg: Mapping, s: measure.Setup, model: torch.nn.Module, result: Dict, train_set) -> Dict:
    """Our training step on a fixed batch (``train``), then fed by the real loader (``data``'s run figures)."""
    iteration = measure.train_step(torch.compile(model) if cfg["compile"] else model, cfg["train"], s)
    images, labels = measure.fake_batch(s.batch, s.crop, s)
    train = measure.time_train(lambda: iteration(images, labels), s, result["flops"]["train_per_image"])
    result["data"].update(data_phase(cfg, s, train_set, iteration))
    return train


def torchvision_phase(cfg: Mapping, s: measure.Setup, ours: Mapping) -> Dict:
    """torchvision's model at our strides and ASPP rates (``ours``: our ``model`` section): trained by its reference
    recipe, in our ``TrainStep`` (``train_same_step``: what is left is the model itself), and inference."""
    backbone, aux_loss = cfg["backbone"]["name"], bool(cfg["model"]["aux_loss"])
    build = partial(measure.build_torchvision_deeplabv3, backbone, s.num_classes, aux_loss=aux_loss)
    train_model = partial(build, cfg["os"], rates=ours["aspp_rates"])
    eval_model = partial(build, cfg["eval_os"], rates=ours["eval_aspp_rates"])
    info, flops = measure.describe(train_model, eval_model, s)
    result = {"model": f"deeplabv3_{backbone}", "recipe": measure.RECIPE, "flops": flops,
              "builder": f"torchvision.models.segmentation.deeplabv3._deeplabv3_resnet(torchvision.models.{backbone}("
                         "replace_stride_with_dilation=...)), classifier: DeepLabHead(atrous_rates=...)",
              **{key: info[key] for key in ("params", "aspp_rates", "eval_aspp_rates", "dilations")}}
    model, (images, labels) = train_model().to(s.device).train(), measure.fake_batch(s.batch, s.crop, s)
    reference = measure.torchvision_reference_step(model, s.device, s.amp_dtype, aux_loss)
    # What the reference's loader yields: float32 normalised images and int64 targets in pageable memory.
    batch = normalize(images.cpu()).contiguous(), labels.cpu().long()
    result["train"] = measure.time_train(lambda: reference(*batch), s, flops["train_per_image"])
    reference = batch = None  # free the reference's optimizer before ours runs
    model.zero_grad(set_to_none=True)  # the reference leaves the last step's gradients allocated
    iteration = measure.train_step(place(model, s.device, s.channels_last), cfg["train"], s)
    same = measure.time_train(lambda: iteration(images, labels), s, None)
    result["train_same_step"] = {"step_ms": same["step_ms"], "images_per_s": same["images_per_s"]}
    model = iteration = None
    # The same ``segment`` call, resolution, output stride and AMP; torchvision's own (NCHW) memory format.
    result["inference"] = measure.time_inference(eval_model().to(s.device).eval(), s, flops["eval_forward_per_image"])
    return result


def _get(section: Optional[Mapping], path: str) -> Any:
    return reduce(lambda d, k: d.get(k) if d else None, path.split("."), section)


def ratios(result: Mapping) -> Dict:
    """ours / torchvision for every table row with a ratio key. Memory ratios are null on the CPU: the peak RSS
    cannot be reset between the two models in one process."""
    cuda, tv = result["device"]["type"] == "cuda", result["torchvision"]
    pairs = {key: (_get(result, path), _get(tv, THEIRS.get(key, path))) for _, path, _, key in ROWS if key}
    return {key: a / b if a is not None and b and (cuda or "memory" not in key) else None
            for key, (a, b) in pairs.items()}


def _fmt(value: Optional[float], digits: int = 2, scale: float = 1) -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}"


def format_table(result: Mapping) -> str:
    """The settings, a row per figure that has one (same-step: with torchvision only), the micro-benchmarks."""
    tv, peak, device = result["torchvision"], result["peak"], result["device"]
    lines = [f"Segmentation benchmark on {device['name']} ({device['type']}); peak: {peak['name'] or 'unknown'} "
             f"{peak['precision']} {_fmt(peak['tflops'], 1)} TFLOP/s", *textwrap.wrap(", ".join(
                 f"{key}={value}" for key, value in result["settings"].items()), 120), ""]
    rows = [("figure", "ours", "torchvision", "ours/tv")]
    for label, path, unit, key in ROWS:
        ours, theirs = _get(result, path), _get(tv, THEIRS.get(key, path))
        if (ours, theirs) != (None, None) and (tv or key != "same_step_images_per_s"):
            rows.append((label.format(**result["data"]), _fmt(ours, *UNITS[unit]), _fmt(theirs, *UNITS[unit]),
                         _fmt((result["ratios"] or {}).get(key), 3)))
    width = max(len(row[0]) for row in rows) + 2
    table = [f"{row[0]:<{width}}{row[1]:>14}" + (f"{row[2]:>14}{row[3]:>10}" if tv else "") for row in rows]
    micro, pool = result["micro"], result["micro"]["image_pool"]
    named = [(f"3x3 conv, {part} shape {micro[part]['shape']}, dilation {row['dilation']}", row)
             for part in ("train", "eval") for row in micro[part]["conv3x3"] or ()]
    named += [(f"image pooling to {pool['shape']}", pool)] if pool["shape"] else []
    lines += [table[0], "-" * len(table[0]), *table[1:]] + [""] * bool(named) + [
        f"{name}: " + ", ".join(f"{key} {_fmt(value, 3)}" for key, value in figures.items()
                                if key not in ("dilation", "shape") and value is not None) for name, figures in named]
    if result.get("inference_backends"):
        lines += ["", *format_rows(result["inference_backends"])]
    return "\n".join(lines + (["", f"results: {result['output']}"] if result["output"] else []))
