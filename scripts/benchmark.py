"""Benchmark training and inference speed: python scripts/benchmark.py backbone=resnet50 os=16 batch_size=16
crop_size=513 device=cuda [compare=torchvision | --compare torchvision]. See docs/benchmarks.md."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.benchmark import rewrite_argv, run_benchmark
from seg.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run_benchmark(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    main()
