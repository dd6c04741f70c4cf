"""Weights files of other projects, recognised from their contents: one module per layout (see ``base.py``).

Order matters only where two layouts could claim one file; none can today (their key sets differ).
"""

from __future__ import annotations

from typing import Any, Optional

from seg.models.layouts import torchvision, torchvision_mobilenet, vainf
from seg.models.layouts.base import Foreign

RECOGNISERS = (torchvision.recognise, torchvision_mobilenet.recognise, vainf.recognise)


def recognise(obj: Any) -> Optional[Foreign]:
    """The first layout that claims ``obj`` (what a file held), or None."""
    for recognise_layout in RECOGNISERS:
        found = recognise_layout(obj)
        if found is not None:
            return found
    return None


__all__ = ["Foreign", "recognise"]
