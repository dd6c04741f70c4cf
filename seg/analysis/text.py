"""The text of any report of ``scripts/receptive_field.py``: the dilated family's modes (the context module, the
U-Net; ``seg.analysis.context`` and ``.unet``, which build on ``seg.analysis.report``) beside the layer-stack ones."""

from __future__ import annotations

from typing import Dict

from seg.analysis.report import format_stack_report


def format_report(report: Dict) -> str:
    if report["mode"] == "context":  # they read built models (torch): imported when needed
        from seg.analysis.context import format_context_report as formatter
    elif report["mode"] == "unet":
        from seg.analysis.unet import format_unet_report as formatter
    else:
        formatter = format_stack_report
    return "\n".join(formatter(report))
