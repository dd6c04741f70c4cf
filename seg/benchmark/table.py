"""The human-readable summary of a benchmark result, printed on stdout."""

from __future__ import annotations

import math
from typing import List, Mapping, Optional, Tuple

def _fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_table(result: Mapping) -> str:
    """The human-readable summary printed on stdout."""
    s, dev, tv, ratios = result["settings"], result["device"], result["torchvision"], result["ratios"]
    train, inf, data, flops, peak = (result["train"], result["inference"], result["data"], result["flops"],
                                     result["peak"])
    memory_note = "CUDA max_memory_allocated" if s["memory"] == "cuda_max_memory_allocated" else \
        "process peak RSS, cumulative"
    lines = [
        f"DeepLabV3 benchmark: {s['backbone']} OS{s['os']} {s['head']}, batch {s['batch_size']}, crop "
        f"{s['crop_size'][0]}x{s['crop_size'][1]}, {s['num_classes']} classes",
        f"device {dev['name']} ({dev['type']}), amp {s['amp_dtype'] or 'off'}, channels_last "
        f"{str(s['channels_last']).lower()}, compile {str(s['compile']).lower()}, warmup {s['warmup']}, "
        f"steps {s['steps']} (medians; timer {s['timer']})",
        f"inference: {s['eval_size'][0]}x{s['eval_size'][1]} at OS{s['eval_os']}, batch {s['eval_batch_size']}; "
        f"peak: {peak['name'] or 'unknown'} {peak['precision']} {_fmt(peak['tflops'], 1)} TFLOP/s",
    ]
    rows: List[Tuple[str, Optional[float], Optional[float], Optional[float], int]] = []

    def row(label, ours, theirs=None, ratio=None, digits=2):
        rows.append((label, ours, theirs, ratio, digits))

    tv_train = tv["train"] if tv else {}
    tv_inf = tv["inference"] if tv else {}
    tv_flops = tv["flops"] if tv else {}
    r = ratios or {}
    row("train step ms (median)", train["step_ms"], tv_train.get("step_ms"), r.get("train_step_ms"))
    row("train images/s", train["images_per_s"], tv_train.get("images_per_s"), r.get("train_images_per_s"), 1)
    row("train images/s (wall)", train["wall_images_per_s"], tv_train.get("wall_images_per_s"),
        r.get("train_wall_images_per_s"), 1)
    if tv:
        row("train images/s, torchvision model in our TrainStep", train["images_per_s"],
            tv["train_same_step"]["images_per_s"],
            r.get("same_step_images_per_s"), 1)
    row("train first step s (compile/autotune)", train["first_step_s"], tv_train.get("first_step_s"))
    row(f"train peak memory MiB ({memory_note})", train["peak_memory_mib"], tv_train.get("peak_memory_mib"),
        r.get("train_peak_memory_mib"), 0)
    row("train TFLOP/s (3x forward)", train["tflops"], tv_train.get("tflops"), None, 3)
    row("train fraction of peak", train["peak_fraction"], tv_train.get("peak_fraction"), None, 3)
    row("inference batch ms (median)", inf["batch_ms"], tv_inf.get("batch_ms"), r.get("inference_batch_ms"))
    row("inference images/s", inf["images_per_s"], tv_inf.get("images_per_s"), r.get("inference_images_per_s"), 1)
    row("inference latency ms (batch 1)", inf["latency_ms"], tv_inf.get("latency_ms"), r.get("latency_ms"))
    row("inference peak memory MiB", inf["peak_memory_mib"], tv_inf.get("peak_memory_mib"),
        r.get("inference_peak_memory_mib"), 0)
    row("inference TFLOP/s", inf["tflops"], tv_inf.get("tflops"), None, 3)
    row("inference fraction of peak", inf["peak_fraction"], tv_inf.get("peak_fraction"), None, 3)
    gflops = lambda v: v / 1e9 if v is not None else None  # noqa: E731
    row("forward GFLOPs / image (train crop)", gflops(flops["forward_per_image"]),
        gflops(tv_flops.get("forward_per_image")), r.get("forward_flops_per_image"), 1)
    row("fwd+bwd GFLOPs / image (counted)", gflops(flops["train_per_image_counted"]),
        gflops(tv_flops.get("train_per_image_counted")), None, 1)
    row("forward GFLOPs / image (eval size, eval OS)", gflops(flops["eval_forward_per_image"]),
        gflops(tv_flops.get("eval_forward_per_image")), r.get("eval_forward_flops_per_image"), 1)
    row("params (M)", result["model"]["params"] / 1e6, tv["params"] / 1e6 if tv else None, r.get("params"), 2)
    if data["samples_per_s"] is not None:
        row(f"data loader samples/s ({data['dataset']}, {data['num_workers']} workers, no model)",
            data["samples_per_s"], digits=1)
        row("real run: share of step time waiting for data", data["wait_share"], digits=3)
        row("real run images/s (loader + TrainStep)", data["run_images_per_s"], digits=1)

    width = max(len(label) for label, *_ in rows) + 2
    header = f"{'figure':<{width}}{'ours':>14}"
    if tv:
        header += f"{'torchvision':>14}{'ours/tv':>10}"
    lines += ["", header, "-" * len(header)]
    for label, ours, theirs, ratio, digits in rows:
        line = f"{label:<{width}}{_fmt(ours, digits):>14}"
        if tv:
            line += f"{_fmt(theirs, digits):>14}{_fmt(ratio, 3):>10}"
        lines.append(line)

    micro = result["micro"]
    if micro["train"]["conv3x3"]:
        for part, what in (("train", "training shape, fwd / fwd+bwd"), ("eval", "inference shape, fwd")):
            shape = micro[part]["shape"]
            cells = []
            for r in micro[part]["conv3x3"]:
                cell = f"d{r['dilation']} {_fmt(r['fwd_ms'], 3)}"
                if r["fwd_bwd_ms"] is not None:
                    cell += f" / {_fmt(r['fwd_bwd_ms'], 3)}"
                if r["dilation"] != 1:
                    cell += f" (x{_fmt(r['fwd_ratio'])}" + (
                        f" / x{_fmt(r['fwd_bwd_ratio'])})" if r["fwd_bwd_ratio"] is not None else ")")
                cells.append(cell)
            lines += ["" if part == "train" else None,
                      f"3x3 conv {shape[1]}->256 on {'x'.join(map(str, shape))} ({what}, ms, x dilation 1): "
                      + "; ".join(cells)]
        lines = [line for line in lines if line is not None]
        pool = micro["image_pool"]
        lines.append(f"image pooling 1x1 -> {pool['shape'][2]}x{pool['shape'][3]} + concat (fwd / fwd+bwd, ms): "
                     f"expand {_fmt(pool['expand_fwd_ms'], 3)} / {_fmt(pool['expand_fwd_bwd_ms'], 3)}; "
                     f"interpolate {_fmt(pool['interpolate_fwd_ms'], 3)} / "
                     f"{_fmt(pool['interpolate_fwd_bwd_ms'], 3)}")
    if tv:
        ours = result["model"]
        lines += ["", f"torchvision: {tv['builder']}",
                  f"ASPP rates {tv['aspp_rates']} (ours {ours['aspp_rates']}); layer4 dilations "
                  f"{tv['dilations']['layer4']} (ours {ours['dilations']['layer4']})"]
    if result.get("output"):
        lines += ["", f"results: {result['output']}"]
    return "\n".join(lines)
