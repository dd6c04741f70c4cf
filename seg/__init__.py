"""DeepLabv3 semantic segmentation: models, data, training and evaluation, usable without Hydra."""

import os
import sys

__version__ = "0.2.0"

# OpenMP threads that sleep instead of spinning while they wait (libgomp reads this once, when torch loads): with
# all cores in use they keep an idle machine's speed and lose only their share when another process takes a core
# (seg.engine.device.size_cpu_threads, docs/benchmarks.md). A value the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
