"""Exponential moving average of the weights (``train.ema_decay``), through torch's own ``AveragedModel``.

``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` (both in every supported torch; timm's
``ModelEmaV3`` would make timm a dependency) keeps a copy of the model and, after every optimizer step, moves each
tensor towards the model's: ``ema = decay * ema + (1 - decay) * model`` (the first update copies the model).

``use_buffers=True``: BatchNorm's running statistics are averaged like the weights. With ``use_buffers=False``
the copy keeps the statistics it was created with, and torch's documented remedy, ``update_bn``, is an extra pass
over the training data before every evaluation; averaging the statistics is what timm's ``ModelEmaV3`` does and
stays exact on resume. (``num_batches_tracked`` is averaged too; it is unused while BatchNorm has a momentum.)
"""

from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

log = logging.getLogger(__name__)


def build_ema(model: torch.nn.Module, decay: Optional[float]) -> Optional[AveragedModel]:
    """An EMA of ``model`` (the plain model, not its DDP or compile wrapper); ``None`` for a decay of None or 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)


def ema_state(ema: AveragedModel) -> Dict:
    """What a checkpoint stores: the averaged model's state dict (the model's own keys) and the update count."""
    return {"ema": ema.module.state_dict(), "ema_updates": int(ema.n_averaged)}


def restore_ema(ema: AveragedModel, state: Mapping) -> None:
    """Continue the EMA a checkpoint saved exactly; a checkpoint without one starts it from the current weights
    (``train.ema_decay`` set on a resume)."""
    if state.get("ema") is None:
        log.info("train.ema_decay: the resumed checkpoint has no EMA of the weights; the EMA starts from its weights")
        return
    ema.module.load_state_dict(state["ema"])
    ema.n_averaged.fill_(int(state["ema_updates"]))
