"""Any timm encoder that has ``features_only`` behind the encoder interface of ``ResNetBackbone``.

timm builds the network (``timm.create_model(name, features_only=True, out_indices=..., output_stride=...)``), so
its own dilation rule, pretrained loading and checkpoint filters apply unchanged. Of timm's feature maps this module
takes three, chosen from ``feature_info.reduction()``: the stride-4 map (the DeepLabv3+ decoder's input), the map
before the last (the auxiliary head's, stage 3 of a ResNet) and the last (the ASPP's, at the output stride).

timm fixes strides and dilations while it builds; to run the same weights at another output stride,
``set_output_stride`` builds the network again on the meta device (no memory, no weights) at the new stride and
copies its plain attributes (strides, dilations, paddings, skip flags) into the live modules; a layer timm builds
differently at the new stride (ResNet-D's shortcut pooling, ConvNeXt's "same"-padded downsampling) is replaced by
the new one, which takes over the live layer's tensors. The re-dilation is timm's own and no parameter is copied or
changed. An encoder whose tensors differ between strides cannot switch in place and says so.

Multi-grid means something only for ResNet-like last stages (timm's ``ResNet`` family): there the 3x3
convolutions of the last stage's units get ``rate * multi_grid[i]``, as ``seg.models.backbone`` does.

timm is an optional dependency (``pip install -e ".[timm]"``): it is imported only when a timm encoder is used.
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from seg.errors import UserError
from seg.io import describe, safe_load
from seg.models.spec import TIMM_PREFIX
from seg.models.weights import WeightsError

PREFIX = TIMM_PREFIX  # build_model(backbone="timm:<timm model name>")
OUTPUT_STRIDES = (8, 16, 32)
INSTALL = 'pip install -e ".[timm]"'
# Modules whose plain attributes must not be copied from the template: nn.Module's own bookkeeping.
SKIPPED_ATTRIBUTES = ("training",)
PLAIN = (bool, int, float, str, type(None))


class TimmMissingError(UserError, ImportError):
    pass


class WeightsUnavailableError(UserError, RuntimeError):
    pass


def is_timm(backbone: str) -> bool:
    return isinstance(backbone, str) and backbone.startswith(PREFIX)


def import_timm():
    try:
        import timm
    except ImportError:
        raise TimmMissingError(f"timm encoders need the timm package, which is not installed: {INSTALL}") from None
    return timm


def check_timm_name(name: str) -> None:
    """``ValueError`` ("backbone ...": seg.config words it as backbone.name) unless timm knows the model."""
    timm = import_timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name or "", timm.list_models(), n=4, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"backbone names no timm model: {name!r}{hint}")


def check_timm_arguments(name: str, output_stride: int, multi_grid: Optional[Sequence[int]]) -> None:
    """``build_model``'s checks of a timm encoder, on the network built on the meta device (milliseconds):
    timm knows the model, builds its feature maps at ``output_stride``, and has ResNet stages for a multi-grid."""
    check_timm_name(name)
    feature_cls = _feature_plan(name)[0]
    _check_stride(name, output_stride, feature_cls)
    if multi_grid is not None and not _has_resnet_stages(name):
        raise ValueError(f"multi_grid applies to ResNet-like last stages (timm's ResNet family); the timm model "
                         f"{name} has none: set it to null (None)")


@functools.lru_cache(maxsize=None)
def _has_resnet_stages(name: str) -> bool:
    return _last_stage_units(_meta(name, 32, _feature_plan(name)[0])) is not None


def _create(name: str, output_stride: int, feature_cls: Optional[str] = None, **kwargs) -> nn.Module:
    timm = import_timm()
    if output_stride != 32:  # timm models without dilation refuse the argument itself
        kwargs["output_stride"] = output_stride
    if feature_cls is not None:
        kwargs["feature_cls"] = feature_cls
    return timm.create_model(name, features_only=True, **kwargs)


def _meta(name: str, output_stride: int, feature_cls: Optional[str] = None, **kwargs) -> nn.Module:
    """The feature network built on the meta device: its structure and ``feature_info`` without weights or memory.

    Some models' initialisation reads tensor values (ConvNeXt in timm 1.0.3: "Cannot copy out of meta tensor"):
    those are built on the CPU instead, with random weights that are never used.
    """
    try:
        with torch.device("meta"):
            return _create(name, output_stride, feature_cls, **kwargs)
    except (RuntimeError, NotImplementedError) as error:
        if "meta" not in str(error):
            raise
    with torch.device("cpu"):
        return _create(name, output_stride, feature_cls, **kwargs)


@functools.lru_cache(maxsize=None)
def _builds_at(name: str, output_stride: int, feature_cls: Optional[str]) -> bool:
    """Whether timm builds ``name`` at ``output_stride`` and its last map really has that reduction.

    Models without dilation raise (TypeError: no ``output_stride`` argument; AssertionError: "only
    output_stride==32 is valid"); one that ignored the argument would report its undilated reduction.
    """
    try:
        return _meta(name, output_stride, feature_cls).feature_info.reduction()[-1] == output_stride
    except Exception:
        return False


def supported_strides(name: str, feature_cls: Optional[str] = None) -> List[int]:
    return [s for s in OUTPUT_STRIDES if _builds_at(name, s, feature_cls)]


def _check_stride(name: str, output_stride: int, feature_cls: Optional[str]) -> None:
    if not _builds_at(name, output_stride, feature_cls):
        raise ValueError(f"output_stride {output_stride} is not supported by the timm model {name}: it builds at "
                         f"output stride {supported_strides(name, feature_cls) or 'none of 8, 16, 32'}")


@functools.lru_cache(maxsize=None)
def _feature_plan(name: str) -> Tuple[Optional[str], Tuple[int, int, int], Tuple[int, ...], Tuple[int, ...]]:
    """``(feature_cls, (low, mid, high) indices, reductions, channels)`` of timm's undilated feature maps.

    timm's default extractor is kept, except its hook-based one (``FeatureHookNet``, e.g. xception65), which
    TorchScript cannot compile: timm's ``getter`` extractor (the model's ``forward_intermediates``) gives the same
    maps and scripts, so it is used where the model has one.
    """
    timm = import_timm()
    try:
        body = _meta(name, 32)
    except RuntimeError as error:  # "features_only not implemented for <name>"
        if "features_only" not in str(error):
            raise
        raise ValueError(f"backbone {PREFIX}{name} cannot be used: timm builds no feature maps for it "
                         f"({str(error).splitlines()[0]})") from None
    feature_cls = None
    if isinstance(body, timm.models.FeatureHookNet):
        try:
            getter = _meta(name, 32, "getter")
        except Exception:
            getter = None
        if hasattr(getattr(getter, "model", None), "forward_intermediates"):  # timm 1.0.3: xception65 has none
            body, feature_cls = getter, "getter"
    reductions = tuple(body.feature_info.reduction())
    channels = tuple(body.feature_info.channels())
    if 4 not in reductions or len(reductions) < 3 or reductions.index(4) >= len(reductions) - 2:
        raise ValueError(f"backbone {PREFIX}{name} has no stride-4 feature map before its last two (timm's feature "
                         f"reductions: {list(reductions)}), which DeepLab's decoder and auxiliary head need")
    low = len(reductions) - 1 - reductions[::-1].index(4)
    return feature_cls, (low, len(reductions) - 2, len(reductions) - 1), reductions, channels


def extractor(name: str) -> Optional[str]:
    """The timm feature extractor ``TimmBackbone`` builds for ``name``: None (timm's default for the model) or
    ``"getter"`` (in place of the hook-based one, see ``_feature_plan``; its keys have the model under ``model.``
    and are not flattened)."""
    return _feature_plan(name)[0]


def _last_stage_units(body: nn.Module) -> Optional[List[nn.Module]]:
    """The units of a timm ResNet's last stage (``layer4``), or None for any other encoder."""
    from timm.models.resnet import BasicBlock, Bottleneck

    stage = getattr(body, "layer4", None)
    if isinstance(stage, nn.Sequential) and len(stage) and all(isinstance(u, (BasicBlock, Bottleneck))
                                                               for u in stage):
        return list(stage)
    return None


def _grid_convs(unit: nn.Module) -> List[nn.Conv2d]:
    from timm.models.resnet import Bottleneck

    return [unit.conv2] if isinstance(unit, Bottleneck) else [unit.conv1, unit.conv2]


def _plain_attributes(module: nn.Module) -> dict:
    def plain(value):
        return isinstance(value, PLAIN) or (isinstance(value, (tuple, list)) and all(plain(v) for v in value))

    return {k: v for k, v in vars(module).items() if k not in SKIPPED_ATTRIBUTES and plain(v)}


class TimmBackbone(nn.Module):
    """A timm feature network; ``forward`` returns (stride-4, second-to-last, last) feature maps."""

    def __init__(self, name: str, output_stride: int = 16, multi_grid: Optional[Sequence[int]] = None,
                 pretrained: str = "none", in_chans: int = 3):
        super().__init__()
        self.in_chans = int(in_chans)  # timm's own in_chans: it adapts pretrained first convs (seg.models.channels)
        check_timm_arguments(name, output_stride, multi_grid)
        feature_cls, indices, _, channels = _feature_plan(name)
        self.name, self.feature_cls, self.indices = name, feature_cls, indices
        self.multi_grid = None if multi_grid is None else [int(g) for g in multi_grid]
        self.body = _build(name, output_stride, feature_cls, indices, pretrained, self.in_chans)
        self.low_level_channels, self.aux_channels, self.out_channels = (channels[i] for i in indices)
        self.output_stride = int(output_stride)
        self._apply_multi_grid()

    def _apply_multi_grid(self) -> None:
        units = _last_stage_units(self.body)
        if self.multi_grid is None or units is None:
            return
        rate = max(1, 32 // self.output_stride)  # timm's dilation of the last stage (1 at OS32)
        for index, unit in enumerate(units):
            dilation = rate * self.multi_grid[index % len(self.multi_grid)]
            for conv in _grid_convs(unit):
                conv.dilation = (dilation, dilation)
                conv.padding = (dilation * (conv.kernel_size[0] - 1) // 2,) * 2

    def set_output_stride(self, output_stride: int) -> None:
        """Re-stride in place after timm's rule for ``output_stride`` (see the module docstring)."""
        _check_stride(self.name, output_stride, self.feature_cls)
        channels = {} if self.in_chans == 3 else {"in_chans": self.in_chans}
        template = _meta(self.name, output_stride, self.feature_cls, out_indices=tuple(self.indices), **channels)
        try:
            _restride(self.body, template)
        except _Unswitchable as error:
            raise ValueError(f"output_stride cannot be switched in place for the timm model {self.name} ({error}): "
                             f"build it at output stride {output_stride} instead (e.g. train with "
                             f"os={output_stride})") from None
        self.output_stride = int(output_stride)
        self._apply_multi_grid()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.body(x)
        # timm's getter extractor is typed Union[list, tuple] for TorchScript; with features_only it returns a list
        if torch.jit.isinstance(features, List[torch.Tensor]):
            return features[0], features[1], features[2]
        raise RuntimeError("timm's feature network returned no list of feature maps")


class _Unswitchable(Exception):
    pass


def _restride(live: nn.Module, planned: nn.Module) -> None:
    """Give ``live`` the strides and dilations of ``planned`` (the same network built by timm at another stride).

    Modules of the same type with the same children take ``planned``'s plain attributes. Where timm builds another
    layer at the new stride (ResNet-D's shortcut pooling, ConvNeXt's downsampling conv with "same" padding), the
    ``planned`` module replaces the live one and adopts its parameter and buffer objects (an optimizer holding
    them still sees the same tensors); a layer whose tensors differ cannot be replaced.
    """
    for attribute, value in _plain_attributes(planned).items():
        setattr(live, attribute, value)
    for key, child in list(planned.named_children()):
        current = live._modules.get(key)
        if current is None:
            raise _Unswitchable(f"{key} exists only at the new stride")
        if type(current) is type(child) and list(dict(current.named_children())) == list(dict(
                child.named_children())):
            _restride(current, child)
        else:
            live._modules[key] = _adopt(child, current, key)


def _adopt(new: nn.Module, old: nn.Module, key: str) -> nn.Module:
    old_modules = dict(old.named_modules())
    own = {f"{path}.{name}" for path, module in old.named_modules()
           for name, value in [*module._parameters.items(), *module._buffers.items()] if value is not None}
    for path, module in new.named_modules():
        source = old_modules.get(path)
        for table in ("_parameters", "_buffers"):
            for name, value in getattr(module, table).items():
                taken = None if source is None else getattr(source, table).get(name)
                if value is None:
                    continue
                if taken is None or taken.shape != value.shape:
                    raise _Unswitchable(f"{key} has other tensors at the new stride")
                getattr(module, table)[name] = taken
                own.discard(f"{path}.{name}")
    if own:
        raise _Unswitchable(f"{key} has fewer tensors at the new stride")
    return new.train(old.training)


def _build(name: str, output_stride: int, feature_cls: Optional[str], indices: Sequence[int],
           pretrained: str, in_chans: int = 3) -> nn.Module:
    options = _pretrained_options(name, pretrained)
    if in_chans != 3:
        options["in_chans"] = in_chans
    try:
        return _create(name, output_stride, feature_cls, out_indices=tuple(indices), **options)
    except UserError:
        raise
    except Exception as error:
        if pretrained == "imagenet":
            raise WeightsUnavailableError(_unavailable(name, error)) from None
        if pretrained not in (None, "none"):
            raise WeightsError(f"backbone weights for the timm model {name} (backbone.pretrained) {pretrained} do "
                               f"not fit it: {' '.join(str(error).split())[:300]}; expected the state dict of "
                               f"timm.create_model({name!r}) (its classifier may differ)") from None
        raise


def _pretrained_options(name: str, pretrained: str) -> dict:
    """timm's own pretrained loading: ``imagenet`` from timm's source (the HF hub), a path through
    ``pretrained_cfg_overlay=dict(file=...)``.

    A torch file is opened once here with ``weights_only=True`` (older timm, e.g. 1.0.3, loads files with full
    pickle, which can run code): what is not a state dict is refused with a line saying what it holds.
    """
    if pretrained in (None, "none"):
        return {"pretrained": False}
    if pretrained == "imagenet":
        return {"pretrained": True}
    path = Path(pretrained)
    what = f"backbone weights for the timm model {name} (backbone.pretrained)"
    if path.suffix != ".safetensors":
        state = safe_load(path, what=what)
        inner = next((state[k] for k in ("state_dict", "model") if isinstance(state, Mapping)
                      and isinstance(state.get(k), Mapping)), state)
        if isinstance(state, Mapping) and "config" in state and "model" in state:
            raise WeightsError(f"{path} is a checkpoint of this project (a whole segmentation model), not {what}: "
                               f"to start from it use model.weights={path}")
        if not isinstance(inner, Mapping) or not inner or not all(isinstance(v, torch.Tensor)
                                                                  for v in inner.values()):
            raise WeightsError(f"{path} is {describe(state)}, not {what} (a state dict of timm.create_model"
                               f"({name!r}))")
    elif not path.is_file():
        raise WeightsError(f"{what} not found: {path}")
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}


def _weights_source(name: str) -> Tuple[str, str]:
    """Where timm looks for ``name``'s ImageNet weights and what to do offline, in words."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return f"timm has no pretrained weights for {name}", "use another model"
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub.constants import HF_HUB_CACHE

        filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
        return (f"the Hugging Face hub file {hub_id}/{filename} (cache {HF_HUB_CACHE})",
                f"on a machine with network run `huggingface-cli download {hub_id}` and copy "
                f"{HF_HUB_CACHE} here (or set HF_HOME), or give backbone.pretrained=PATH to a local file")
    url = cfg.url or "(no url)"
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return f"{url} (cache {cache})", f"download it to {cache / os.path.basename(url)}"


def _unavailable(name: str, error: BaseException) -> str:
    where, how = _weights_source(name)
    return (f"ImageNet weights for the timm model {name} could not be loaded from {where} "
            f"({type(error).__name__}): {how}, or train from scratch with backbone.pretrained=none")


def fetch_imagenet_weights(name: str) -> None:
    """Bring timm's ImageNet weights for ``name`` into its cache, or fail at once with what to do.

    Training scripts call this before any other work, as ``seg.models.backbone.fetch_imagenet_weights`` for the
    built-in ResNets. Without network the hub client retries for about 45 s before it gives up
    (``HF_HUB_OFFLINE=1``: at once).
    """
    timm = import_timm()
    try:
        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None)
        if hub_id:
            _download_from_hf(hub_id, getattr(cfg, "hf_hub_filename", None))
        elif cfg is not None and cfg.url:
            from timm.models._hub import download_cached_file

            download_cached_file(cfg.url)
        else:
            raise RuntimeError("no pretrained weights")
    except UserError:
        raise
    except Exception as error:
        raise WeightsUnavailableError(_unavailable(name, error)) from None


def _download_from_hf(hub_id: str, filename: Optional[str]) -> None:
    """The files timm's ``load_state_dict_from_hf`` reads: ``model.safetensors``, else ``pytorch_model.bin``."""
    from huggingface_hub import hf_hub_download

    if filename:
        hf_hub_download(hub_id, filename)
        return
    try:
        hf_hub_download(hub_id, "model.safetensors")
    except Exception:
        hf_hub_download(hub_id, "pytorch_model.bin")
