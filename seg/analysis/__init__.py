"""Atrous analysis: receptive field, coverage holes (gridding), HDC checks and valid taps of dilated convs.

Pure arithmetic on layer stacks, without torch; ``seg.analysis.model`` reads the stack of a built model and
``seg.analysis.plot`` saves PNG figures (matplotlib). ``scripts/receptive_field.py`` is the command.
"""

from seg.analysis.coverage import coverage_map, coverage_profile, coverage_summary, receptive_field, total_stride
from seg.analysis.feature_map import valid_taps
from seg.analysis.hdc import check_hdc, max_tap_distances, suggest_rates
from seg.analysis.layers import Layer, output_size, parse_layers
from seg.analysis.report import analyse_layers
from seg.analysis.text import format_report

__all__ = ["Layer", "analyse_layers", "check_hdc", "coverage_map", "coverage_profile", "coverage_summary",
           "format_report", "max_tap_distances", "output_size", "parse_layers", "receptive_field",
           "suggest_rates", "total_stride", "valid_taps"]
