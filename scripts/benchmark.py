"""Benchmark training and inference speed: python scripts/benchmark.py backbone=resnet50 os=16 batch_size=16
crop_size=513 device=cuda [compare=torchvision | --compare torchvision]. See docs/benchmarks.md."""

import sys
from pathlib import Path
from typing import List, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.benchmark.run import run_benchmark
from seg.errors import exit_on_user_error
from seg.overrides import check_overrides


def rewrite_argv(argv: Sequence[str]) -> List[str]:
    """Accept ``--compare [torchvision]`` / ``--compare=torchvision`` (argparse style) as Hydra's ``compare=...``."""
    out: List[str] = []
    for arg in argv:
        if out and out[-1] == "--compare" and "=" not in arg and not arg.startswith("-"):
            out[-1] = f"compare={arg}"
        else:
            out.append(arg)
    return [f"compare={a[10:] or 'torchvision'}" if a == "--compare" or a.startswith("--compare=") else a for a in out]


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run_benchmark(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    sys.argv = rewrite_argv(sys.argv)
    check_overrides(__file__, "benchmark")
    main()
