"""Weights files of other projects, recognised from their contents: one module per layout (see ``base.py``).

Order matters only where two layouts could claim one file; none can today (their key sets differ).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from seg.io import NeedsCodeError, load_foreign, safe_load
from seg.models.layouts import mmseg, smp, torchvision, torchvision_mobilenet, vainf
from seg.models.layouts.base import Foreign, WeightsError

RECOGNISERS = (torchvision.recognise, torchvision_mobilenet.recognise, vainf.recognise, mmseg.recognise, smp.recognise)


def recognise(obj: Any) -> Optional[Foreign]:
    """The first layout that claims ``obj`` (what a file held), or None."""
    for recognise_layout in RECOGNISERS:
        found = recognise_layout(obj)
        if found is not None:
            return found
    return None


def load_file(path: Union[str, Path], what: str = "model weights") -> Any:
    """What a weights file holds, read without running code from it.

    ``safe_load`` first (``weights_only=True``). A file it refuses for naming classes or functions of another
    framework (mmengine's ``HistoryBuffer``, VainF's NumPy ``best_score``) is read again with ``load_foreign``,
    which keeps such objects as inert records, and kept only if a layout recognises it: anything else stays
    refused with ``safe_load``'s message. A folder or a ``.safetensors`` file is read as smp's ``save_pretrained``
    writes them (``seg.models.layouts.smp.read_pretrained``).
    """
    if smp.is_pretrained_path(path):
        return smp.read_pretrained(path, what=what)
    try:
        return safe_load(path, what=what)
    except NeedsCodeError as refusal:
        obj = load_foreign(path, what=what)
        if recognise(obj) is None:
            raise refusal from None
        return obj


__all__ = ["Foreign", "WeightsError", "load_file", "recognise"]
