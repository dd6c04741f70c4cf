"""Performance benchmark: training and inference throughput, memory, FLOPs, data loading, atrous micro-benchmarks.

``run_benchmark(config, run_dir)`` takes a ``configs/benchmark.yaml``-shaped configuration (an OmegaConf config or
a plain dict), prints a table and writes every figure to a JSON file (``output``, relative to ``run_dir``).
Nothing here imports Hydra; ``scripts/benchmark.py`` is the thin entry point.

One job per module:

* ``config``: the command line's ``--compare`` spelling and the configuration's validation;
* ``timing``: synchronisation, per-call timers, peak memory and the statistics over them;
* ``hardware``: the device, library versions and the device's peak TFLOP/s;
* ``model_info``: what a model is without running it: dilations, ASPP rates, parameters, FLOPs;
* ``measure``: the timed phases: training step, inference, data loader, real run;
* ``micro``: the atrous micro-benchmarks (3x3 conv per dilation, image pooling);
* ``torchvision_ref``: torchvision's DeepLabV3 and its reference training recipe, benchmarked alike;
* ``schema``: the JSON result's sections (every key present, null when not measured) and the ratios;
* ``table``: the human-readable summary;
* ``run``: ``run_benchmark``, which runs the phases in order and writes the result.
"""

from seg.benchmark.config import COMPARE_MODES, rewrite_argv, validate_benchmark
from seg.benchmark.hardware import PEAK_SOURCE, PEAK_TFLOPS, device_info, lookup_peak, peak_tflops, versions
from seg.benchmark.measure import (bench_inference, bench_loader, bench_real_run, bench_train, build_loader,
                                   make_train_step)
from seg.benchmark.micro import bench_conv3x3, bench_image_pool
from seg.benchmark.model_info import aspp_rates, conv3x3_dilations, count_flops
from seg.benchmark.run import DEFAULT_COUNTS, run_benchmark
from seg.benchmark.schema import RATIO_KEYS, SCHEMA, TRAIN_FLOPS_MULTIPLIER, compute_ratios
from seg.benchmark.table import format_table
from seg.benchmark.timing import time_calls, time_latency
from seg.benchmark.torchvision_ref import (TORCHVISION_BACKBONES, bench_torchvision, build_torchvision_deeplabv3,
                                           torchvision_reference_step)

__all__ = [
    "COMPARE_MODES", "DEFAULT_COUNTS", "PEAK_SOURCE", "PEAK_TFLOPS", "RATIO_KEYS", "SCHEMA", "TORCHVISION_BACKBONES",
    "TRAIN_FLOPS_MULTIPLIER", "aspp_rates", "bench_conv3x3", "bench_image_pool", "bench_inference", "bench_loader",
    "bench_real_run", "bench_torchvision", "bench_train", "build_loader", "build_torchvision_deeplabv3",
    "compute_ratios", "conv3x3_dilations", "count_flops", "device_info", "format_table", "lookup_peak",
    "make_train_step", "peak_tflops", "rewrite_argv", "run_benchmark", "time_calls", "time_latency",
    "torchvision_reference_step", "validate_benchmark", "versions",
]
