"""The JSON result's shape (schema ``seg.benchmark/1``): every section with all its keys, null until measured, and
the ours / torchvision ratios."""

from __future__ import annotations

from typing import Dict, Mapping

import torch

from seg.benchmark.timing import ratio

SCHEMA = "seg.benchmark/1"
# Training FLOPs per image are quoted as this multiple of the forward FLOPs (backward ~ 2x forward).
TRAIN_FLOPS_MULTIPLIER = 3


def empty_train() -> Dict:
    return {"step_ms": None, "step_ms_p10": None, "step_ms_p90": None, "images_per_s": None,
            "wall_images_per_s": None, "first_step_s": None, "peak_memory_mib": None, "tflops": None,
            "peak_fraction": None}


def empty_inference() -> Dict:
    return {"batch_size": None, "batch_ms": None, "images_per_s": None, "latency_ms": None, "latency_ms_p90": None,
            "peak_memory_mib": None, "tflops": None, "peak_fraction": None}


def empty_data() -> Dict:
    return {"dataset": None, "num_workers": None, "batches": None, "samples_per_s": None, "first_batch_s": None,
            "run_steps": None, "wait_share": None, "wait_ms_per_step": None, "run_images_per_s": None}


def empty_micro() -> Dict:
    return {"train": {"shape": None, "dtype": None, "conv3x3": None},
            "eval": {"shape": None, "dtype": None, "conv3x3": None},
            "image_pool": {"shape": None, "expand_fwd_ms": None, "interpolate_fwd_ms": None,
                           "expand_fwd_bwd_ms": None, "interpolate_fwd_bwd_ms": None}}


def empty_torchvision() -> Dict:
    return {"model": None, "builder": None, "recipe": None, "params": None, "aspp_rates": None, "eval_aspp_rates": None,
            "dilations": None, "flops": empty_flops(), "train": empty_train(),
            "train_same_step": {"step_ms": None, "images_per_s": None}, "inference": empty_inference()}


def empty_flops() -> Dict:
    return {"forward_per_image": None, "train_per_image": None, "train_multiplier": TRAIN_FLOPS_MULTIPLIER,
            "train_per_image_counted": None, "eval_forward_per_image": None}


RATIO_KEYS = ("train_step_ms", "train_images_per_s", "train_wall_images_per_s", "train_peak_memory_mib",
              "same_step_images_per_s", "inference_batch_ms", "inference_images_per_s", "latency_ms",
              "inference_peak_memory_mib", "forward_flops_per_image", "eval_forward_flops_per_image", "params")


def compute_ratios(train: Mapping, inference: Mapping, flops: Mapping, model_info: Mapping, tv: Mapping,
                   device: torch.device) -> Dict:
    """ours / torchvision for each figure. Memory ratios are null on the CPU: peak RSS cannot be reset between
    the two models in one process, so the second figure includes the first."""
    cuda = device.type == "cuda"
    return {
        "train_step_ms": ratio(train["step_ms"], tv["train"]["step_ms"]),
        "train_images_per_s": ratio(train["images_per_s"], tv["train"]["images_per_s"]),
        "train_wall_images_per_s": ratio(train["wall_images_per_s"], tv["train"]["wall_images_per_s"]),
        "train_peak_memory_mib": ratio(train["peak_memory_mib"], tv["train"]["peak_memory_mib"]) if cuda else None,
        "same_step_images_per_s": ratio(train["images_per_s"], tv["train_same_step"]["images_per_s"]),
        "inference_batch_ms": ratio(inference["batch_ms"], tv["inference"]["batch_ms"]),
        "inference_images_per_s": ratio(inference["images_per_s"], tv["inference"]["images_per_s"]),
        "latency_ms": ratio(inference["latency_ms"], tv["inference"]["latency_ms"]),
        "inference_peak_memory_mib": (ratio(inference["peak_memory_mib"], tv["inference"]["peak_memory_mib"])
                                      if cuda else None),
        "forward_flops_per_image": ratio(flops["forward_per_image"], tv["flops"]["forward_per_image"]),
        "eval_forward_flops_per_image": ratio(flops["eval_forward_per_image"], tv["flops"]["eval_forward_per_image"]),
        "params": ratio(model_info["params"], tv["params"]),
    }
