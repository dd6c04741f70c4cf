"""Performance benchmark (docs/benchmarks.md): ``measure`` times what the project runs, ``reference`` does the same
for torchvision's DeepLabV3 and reference recipe, ``run`` checks the configuration, runs the phases and reports."""

from seg.benchmark.run import rewrite_argv, run_benchmark

__all__ = ["rewrite_argv", "run_benchmark"]
