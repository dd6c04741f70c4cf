"""The one boundary between configuration (Hydra / OmegaConf or a plain dict) and the library.

Everything below takes plain arguments. This module checks every key of every command's configuration before
any work starts (train, evaluate, predict, export; the benchmark adds its own keys on top of ``validate_train``),
naming the key and the allowed values on error, and turns configurations into keyword arguments for
``build_model``, ``build_dataset`` and ``segment``. Each rule is checked here once.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, ValidationError

from seg.data.channels import InputStats, stats_from_config
from seg.data.class_weights import check_class_weights
from seg.errors import UserError
from seg.metrics import check_exclude
from seg.models import check_arguments
from seg.models.backbone import check_output_stride as _check_output_stride
from seg.models.spec import CONFIG_KEYS, arguments_from_config, config_key, encoder_name

AMP_MODES = ("auto", "fp16", "bf16", "off")
DEVICES = ("auto", "cpu", "cuda")
LOSSES = ("ce", "bootstrap", "dice", "ce+dice", "focal")  # seg.engine.losses.segmentation_loss's ``kind``
INFERENCE_MODES = ("whole", "slide")  # seg.engine.inference.segment's ``mode``
# build_model's argument names -> the config keys that set them: the library's errors, reworded.
MODEL_KEYS = {**{argument: config_key(argument) for argument in CONFIG_KEYS}, "num_classes": "dataset.num_classes"}
# inference.accumulate -> segment's ``accumulate``: the dtype of the buffer probabilities are summed into
ACCUMULATE = {"float32": torch.float32, "float16": torch.float16}
EXPORT_FORMATS = ("torchscript", "onnx", "export")
BACKENDS = ("torch", "onnxruntime", "openvino")  # what runs a model in evaluate.py and predict.py (seg.deployment)
PRECISIONS = ("fp32", "bf16", "int8", "fp16")  # int8: the file scripts/quantize.py writes; fp16: on GPUs only
BACKBONE_SOURCES = ("torchvision", "timm")  # backbone.source: the built-in ResNets, or any timm encoder
# evaluate/predict/export ``weights``: auto (the EMA where the checkpoint has one) | ema | raw
WEIGHT_CHOICES = ("auto", "ema", "raw")
LOGGERS = ("tensorboard", "mlflow", "wandb")  # ``logger``: TensorBoard is always on; the others are trackers beside it
WANDB_MODES = ("online", "offline", "disabled")
PREDICT_FORMATS = ("default", "cityscapes", "voc")  # predict.py's ``format``: its own files, or a server's
# dataset keys that describe the run rather than how to read the files
DATASET_RUN_KEYS = ("val_split", "ignore_index", "channels", "mean", "std")


class ConfigError(UserError, ValueError):
    pass


# -- the typed schema: one dataclass per section; ranges and choices are checked by the validate_* functions ------

@dataclass
class BackboneKeys:
    name: str
    pretrained: str  # imagenet | none | a path
    stem: str = "standard"  # standard | deep
    source: str = "torchvision"  # torchvision (the built-in encoders) | timm; checkpoints before it lack the key


@dataclass
class ModelKeys:
    multi_grid: Optional[List[int]]  # null: no multi-grid (encoders without ResNet-like stages)
    aspp_rates: Optional[List[int]]
    head: str
    aux_loss: bool
    dropout: float
    weights: Optional[str]
    contract_dilation: bool = False
    decoder_convs: Optional[int] = None
    aspp_channels: int = 256
    aspp_projection_kernel: int = 1
    separable_convs: bool = False
    classifier_dropout: float = 0.0
    depthwise_bn_relu: bool = True
    aspp_conv: bool = False
    align_corners: bool = False
    aspp_separable: Optional[bool] = None
    cascade_blocks: int = 3  # head cascade: block5 .. block(4 + n)
    low_level_reduced: int = 48
    multi_grid_scaled: bool = True
    basic_conv2_dilated: bool = True
    context: Optional[str] = None  # head=context: basic | large (null: basic)
    unet_widths: Optional[List[int]] = None  # head=unet_dilated (model=unet_dilated): null is 64..1024
    unet_dropout: float = 0.5
    bn_momentum: Optional[float] = None  # seg.engine.batchnorm: a training setting, not build_model's


@dataclass
class ModelConfig:
    """The keys that describe the network (train.py and benchmark.py)."""
    os: int
    backbone: BackboneKeys
    model: ModelKeys


@dataclass
class DatasetKeys:
    """The keys every dataset has; the format's own keys are checked by ``seg.data.build_dataset``."""
    name: str
    root: Optional[str]
    split: str
    val_split: str
    num_classes: Optional[int]
    class_names: Optional[List[str]]
    ignore_index: int
    channels: int = 3  # image bands (seg.data.channels); configs before the key are RGB
    mean: Optional[List[float]] = None  # per-channel normalisation of [0, 1] values; null: the default for channels
    std: Optional[List[float]] = None


@dataclass
class TrainKeys:
    iters: int
    batch_size: int
    crop_size: Any  # an int or [height, width]: checked by crop_hw
    scale_range: List[float]
    hflip: bool
    color_jitter: bool
    lr: float
    momentum: float
    weight_decay: float
    poly_power: float
    warmup_iters: int
    backbone_lr_mult: float
    head_lr_mult: float
    loss: str
    bootstrap_fraction: float
    focal_gamma: float
    class_weights: Any  # none | a method | a list of numbers: checked by check_class_weights
    aux_weight: float
    amp: str
    compile: bool
    num_workers: int
    eval_every: int
    ckpt_every: int
    ckpt_every_min: float
    log_every: int
    val_batch_size: int
    tb_images: int
    max_nonfinite: int
    stop_at: Optional[int]
    freeze_bn: bool = False
    freeze_backbone: bool = False
    accumulate: int = 1
    ema_decay: Optional[float] = None  # null or 0: no EMA of the weights


@dataclass
class MetricsKeys:
    exclude_classes: Optional[List[str]]  # null in evaluate.yaml: as trained


@dataclass
class MlflowKeys:
    tracking_uri: Optional[str] = None
    experiment: str = "seg"
    run_name: Optional[str] = None
    log_checkpoint: bool = False


@dataclass
class WandbKeys:
    project: str = "seg"
    entity: Optional[str] = None
    name: Optional[str] = None
    mode: Optional[str] = None
    log_checkpoint: bool = False


@dataclass
class TrainConfig(ModelConfig):
    """configs/train.yaml."""
    seed: int
    device: str
    resume: Optional[str]
    resume_wait_s: float
    dist_timeout_min: float
    dataset: DatasetKeys
    train: TrainKeys
    metrics: MetricsKeys
    logger: Any = "tensorboard"  # a name or a list of names: checked by tracker_kwargs
    mlflow: MlflowKeys = dataclasses.field(default_factory=MlflowKeys)
    wandb: WandbKeys = dataclasses.field(default_factory=WandbKeys)


@dataclass
class TTAKeys:
    scales: List[float]
    flip: bool


@dataclass
class InferenceKeys:
    mode: str
    window: Optional[List[int]]
    stride: Optional[List[int]]


@dataclass
class InferenceConfig:
    """evaluate.py and predict.py: configs/inference_options and the files they name."""
    os: Optional[int]
    device: str
    amp: Optional[str]
    tta: TTAKeys
    inference: InferenceKeys
    backend: str = "torch"
    precision: str = "fp32"
    weights: str = "auto"
    channels_last: bool = True
    ckpt: Optional[str] = None
    input: Optional[str] = None
    output: Optional[str] = None


@dataclass
class EvaluateDatasetKeys:
    root: Optional[str]
    split: Optional[str]


@dataclass
class LoaderConfig:
    """evaluate.py's loader, dataset overrides and metrics."""
    batch_size: int
    num_workers: int
    dataset: EvaluateDatasetKeys
    metrics: MetricsKeys


@dataclass
class CheckKeys:
    sizes: List[List[int]]
    rtol: float
    atol: float


@dataclass
class ExportConfig:
    """configs/export.yaml."""
    ckpt: Optional[str]
    output: Optional[str]
    format: str
    os: Optional[int]
    check: CheckKeys
    weights: str = "auto"


_TYPE_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
               str: ("a string", "strings")}


def _describe(hint, plural: bool = False) -> str:
    """``Optional[List[float]]`` -> "a list of numbers or null"."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        return f"{_describe(args[0], plural)} or null"
    if typing.get_origin(hint) is list:
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True)}"
    return _TYPE_NAMES[hint][plural]


def conform(cfg: MutableMapping, schema: type, prefix: str = "") -> None:
    """Check the type of every key of ``cfg`` that the dataclass ``schema`` names, and store the typed value.

    Each value is assigned to its field of ``OmegaConf.structured(schema)``, so OmegaConf's conversions decide
    what fits (``"0.5"`` is a float, ``"maybe"`` is no bool, ``1.5`` is no integer); the converted value is
    written back, so that ``train.hflip=off`` means ``False`` downstream and not a truthy string. Keys the
    schema does not name are left to the code that reads them (a dataset format's own keys). One assignment per
    key, rather than one merge, so the error names the full key whatever OmegaConf's message says.
    """
    typed = OmegaConf.structured(schema)
    hints = typing.get_type_hints(schema)
    for name in (item.name for item in dataclasses.fields(schema)):
        if name not in cfg or cfg[name] == "???":  # unset mandatory values are to_plain's to report
            continue
        key, value, hint = prefix + name, cfg[name], hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, MutableMapping):
                raise ConfigError(f"{key} must be a group of keys ({key}.<name>=...), got {value!r}")
            conform(value, hint, key + ".")
            continue
        try:
            typed[name] = value
        except ValidationError:
            raise ConfigError(f"{key} must be {_describe(hint)}, got {value!r}") from None
        converted = typed[name]
        cfg[name] = OmegaConf.to_container(converted) if isinstance(converted, (DictConfig, ListConfig)) \
            else converted


def to_plain(cfg: Any, throw_on_missing: bool = True) -> Dict:
    """A resolved plain ``dict`` from an OmegaConf config or a mapping (what checkpoints store).

    With ``throw_on_missing=False`` mandatory values left unset (``???``) stay as the string ``"???"``.
    """
    if isinstance(cfg, DictConfig):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=throw_on_missing)
        except MissingMandatoryValue as error:
            hint = ""
            if error.full_key == "dataset.root":
                hint = " (the folder that holds the dataset, see docs/datasets.md)"
            raise ConfigError(f"{error.full_key} must be set on the command line{hint}, "
                              f"e.g. {error.full_key}=...") from None
    return {k: to_plain(v, throw_on_missing) if isinstance(v, Mapping) else copy.deepcopy(v) for k, v in cfg.items()}


def choice(value, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


def number(value, key: str, minimum: float = 0, strict: bool = True, integer: bool = False,
           below: Optional[float] = None) -> None:
    """A finite int/float above ``minimum`` (``strict``: not equal to it) and, with ``below``, under that."""
    kind = int if integer else (int, float)
    bad_type = not isinstance(value, kind) or isinstance(value, bool) or not math.isfinite(value)
    if (bad_type or (value <= minimum if strict else value < minimum)
            or (below is not None and value >= below)):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        bound += f" and < {below}" if below is not None else ""
        raise ConfigError(f"{key} must be {'an integer' if integer else 'a finite number'} {bound}, got {value!r}")


def require(cfg: Mapping, key: str, usage: str) -> None:
    if cfg.get(key) in (None, ""):
        raise ConfigError(f"{key} is required: {usage}")


def in_config_terms(check, *args, keys: Mapping[str, str] = MODEL_KEYS, **kwargs) -> None:
    """Run a library check; its ``ValueError`` ("<argument> must be ...") becomes a ``ConfigError`` naming the key."""
    try:
        check(*args, **kwargs)
    except ValueError as error:
        argument, _, rest = str(error).partition(" ")
        raise ConfigError(f"{keys.get(argument, argument)} {rest}") from None


def check_output_stride(value, key: str = "os", optional: bool = False) -> None:
    """One of the output strides; with ``optional``, ``null`` too (evaluate/predict/export: as trained)."""
    if not (optional and value is None):
        in_config_terms(_check_output_stride, value, keys={"output_stride": key})


def backbone_name(cfg: Mapping) -> str:
    """``build_model``'s ``backbone`` from ``backbone.source`` and ``backbone.name`` (``seg.models.spec``), the
    source checked first."""
    choice(cfg["backbone"].get("source", "torchvision"), "backbone.source", BACKBONE_SOURCES)
    return encoder_name(cfg["backbone"])


def _check_model(cfg: Mapping) -> None:
    """The library's ``check_arguments`` on the arguments the config means (defaults from ``seg.models.spec``)."""
    model = cfg["model"]
    backbone_name(cfg)  # backbone.source first
    arguments = arguments_from_config(cfg, None)
    checked = inspect.signature(check_arguments).parameters
    in_config_terms(check_arguments, **{k: v for k, v in arguments.items() if k in checked},
                    keys={**MODEL_KEYS, "pretrained": "backbone.pretrained"})
    if "dropout" in model:
        number(model["dropout"], "model.dropout", strict=False, below=1)


def validate_train(cfg: MutableMapping) -> None:
    """Check the type and range of every training key before any work starts (typed values are stored back)."""
    conform(cfg, TrainConfig)
    check_required(cfg)
    _check_model(cfg)
    choice(cfg["device"], "device", DEVICES)
    number(cfg["seed"], "seed", strict=False, integer=True, below=2 ** 31)
    number(cfg["dist_timeout_min"], "dist_timeout_min")
    number(cfg.get("resume_wait_s", 120), "resume_wait_s", strict=False)
    train = cfg["train"]
    choice(train["amp"], "train.amp", AMP_MODES)
    choice(train["loss"], "train.loss", LOSSES)
    number(train["lr"], "train.lr")
    for key in ("iters", "batch_size"):
        number(train[key], f"train.{key}", integer=True)
    for key in ("eval_every", "ckpt_every", "num_workers", "warmup_iters"):
        number(train[key], f"train.{key}", strict=False, integer=True)
    for key in ("log_every", "max_nonfinite", "val_batch_size"):
        number(train[key], f"train.{key}", integer=True)
    number(train["tb_images"], "train.tb_images", strict=False, integer=True)
    for key in ("weight_decay", "aux_weight", "poly_power", "backbone_lr_mult", "head_lr_mult"):
        number(train[key], f"train.{key}", strict=False)
    number(train["momentum"], "train.momentum", strict=False, below=1)
    number(train.get("ckpt_every_min", 30), "train.ckpt_every_min", strict=False)
    if train.get("stop_at") is not None:
        number(train["stop_at"], "train.stop_at", integer=True)
    number(train.get("accumulate", 1), "train.accumulate", integer=True)
    momentum = cfg["model"].get("bn_momentum")
    if momentum is not None and not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
        raise ConfigError(f"model.bn_momentum must be null (torch's 0.1) or a number in [0, 1] (torch's momentum is "
                          f"1 - the paper's decay: 0.9997 -> 0.0003), got {momentum!r}")
    if train.get("ema_decay") is not None:
        number(train["ema_decay"], "train.ema_decay", strict=False, below=1)
    tracker_kwargs(cfg)
    crop_hw(train["crop_size"])
    scale_range = train["scale_range"]
    if len(scale_range) != 2 or not (0 < scale_range[0] <= scale_range[1] < math.inf):
        raise ConfigError(f"train.scale_range must be two numbers [low, high] with 0 < low <= high, "
                          f"got {scale_range!r}")
    if not 0 < train["bootstrap_fraction"] <= 1:
        raise ConfigError(f"train.bootstrap_fraction must be in (0, 1], got {train['bootstrap_fraction']!r}")
    number(train.get("focal_gamma", 2.0), "train.focal_gamma", strict=False)
    validate_class_weights(train.get("class_weights"))
    excluded_classes(cfg.get("metrics", {}).get("exclude_classes"))
    stats = dataset_stats(cfg["dataset"])
    if stats.channels != 3 and train["color_jitter"]:
        raise ConfigError(f"train.color_jitter jitters RGB colours (hue, saturation) and dataset.channels is "
                          f"{stats.channels}: set train.color_jitter=false")


def dataset_stats(dataset_cfg: Mapping) -> InputStats:
    """``dataset.channels``, ``dataset.mean`` and ``dataset.std`` checked, the defaults filled in
    (``seg.data.channels``)."""
    try:
        return stats_from_config(dataset_cfg)
    except ValueError as error:
        raise ConfigError(f"dataset.{error}") from None


def check_required(cfg: Mapping) -> None:
    """The keys an experiment lists under ``required_keys`` (key -> what to give) must be set, unless the run
    resumes. Not ``???`` in the experiment: merged onto train.yaml's ``null``, a missing value leaves the null."""
    if cfg.get("resume"):
        return
    for key, what in (cfg.get("required_keys") or {}).items():
        section, _, name = key.rpartition(".")
        value = (cfg.get(section) or {} if section else cfg).get(name)
        if value in (None, ""):
            raise ConfigError(f"{key} must be set on the command line: {what}")


def validate_class_weights(value, num_classes: Optional[int] = None) -> None:
    """``train.class_weights`` (the library's ``check_class_weights``); with ``num_classes``, its length too."""
    in_config_terms(check_class_weights, value, num_classes, keys={"class_weights": "train.class_weights"})


def excluded_classes(value, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """``metrics.exclude_classes`` (null: none), checked by the library's ``check_exclude`` against
    ``class_names`` when given."""
    names = [] if value is None else value
    in_config_terms(check_exclude, names, class_names, keys={"exclude": "metrics.exclude_classes"})
    return list(names)


def crop_hw(value, key: str = "train.crop_size") -> Tuple[int, int]:
    """``(height, width)`` from a positive int (a square) or a ``[height, width]`` pair; else a ``ConfigError``."""
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        raise ConfigError(f"{key} must be a positive integer or [height, width], got {value!r}")
    return sides[0], sides[-1]


def model_kwargs(cfg: Mapping, num_classes: int, pretrained: Optional[str] = None) -> Dict:
    """Arguments of ``seg.models.build_model`` from a configuration."""
    return arguments_from_config(cfg, num_classes, pretrained)


def batchnorm_kwargs(cfg: Mapping) -> Dict:
    """Arguments of ``seg.engine.batchnorm.configure`` (configs written before these keys lack them)."""
    return dict(momentum=cfg["model"].get("bn_momentum"), freeze_bn=bool(cfg["train"].get("freeze_bn", False)),
                freeze_backbone=bool(cfg["train"].get("freeze_backbone", False)))


def tracker_kwargs(cfg: Mapping) -> Dict[str, Dict]:
    """Arguments of ``seg.engine.trackers.open_trackers``: ``{tracker: its section's keys}`` for each tracker that
    ``logger`` names beside TensorBoard (which is always on). Configs written before ``logger`` existed have none."""
    names = cfg.get("logger") or "tensorboard"
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"logger must be one of {list(LOGGERS)} or a list of them, e.g. logger=[mlflow,wandb], "
                          f"got {names!r}")
    for name in names:
        choice(name, "logger", LOGGERS)
    wandb = cfg.get("wandb") or {}
    if wandb.get("mode") is not None:
        choice(wandb["mode"], "wandb.mode", WANDB_MODES)
    return {name: dict(cfg.get(name) or {}) for name in dict.fromkeys(names) if name != "tensorboard"}


def dataset_kwargs(dataset_cfg: Mapping, split: Optional[str] = None) -> Dict:
    """Arguments of ``seg.data.build_dataset`` from the ``dataset`` group (optionally another split)."""
    kwargs = {k: v for k, v in dataset_cfg.items() if k not in DATASET_RUN_KEYS}
    if dataset_cfg.get("ignore_index", 255) != 255:  # the ignore value of 16-bit masks (dataset=folder)
        kwargs["ignore_index"] = dataset_cfg["ignore_index"]
    if dataset_cfg.get("channels", 3) != 3:
        kwargs["channels"] = dataset_cfg["channels"]
    if split is not None:
        kwargs["split"] = split
    return kwargs


# -- evaluate.py, predict.py, export.py --------------------------------------------------------------------------

def validate_inference(cfg: MutableMapping) -> None:
    """``os``, ``device``, ``amp``, ``tta``, ``inference`` and ``weights`` (a ``null`` os / amp means: as trained)."""
    conform(cfg, InferenceConfig)
    check_output_stride(cfg["os"], optional=True)
    choice(cfg.get("weights", "auto"), "weights", WEIGHT_CHOICES)
    choice(cfg["device"], "device", DEVICES)
    if cfg["amp"] is not None:
        choice(cfg["amp"], "amp", AMP_MODES)
    cfg.setdefault("backend", "torch")  # callers of the library may leave the deployment keys out
    cfg.setdefault("precision", "fp32")
    choice(cfg["backend"], "backend", BACKENDS)
    choice(cfg["precision"], "precision", PRECISIONS)
    if cfg["backend"] == "torch" and cfg["precision"] == "int8":
        raise ConfigError("precision=int8 runs the int8 ONNX file of scripts/quantize.py: backend=onnxruntime or "
                          "backend=openvino with ckpt=<that file>")
    if cfg["backend"] == "torch" and cfg["precision"] in ("bf16", "fp16"):  # eager torch's bf16/fp16: autocast
        if cfg["amp"] not in (None, cfg["precision"]):
            raise ConfigError(f"precision={cfg['precision']} runs torch under {cfg['precision']} autocast, but "
                              f"amp={cfg['amp']}: drop one")
        cfg["amp"] = cfg["precision"]
    if not isinstance(cfg["tta"]["flip"], bool):
        raise ConfigError(f"tta.flip must be true or false, got {cfg['tta']['flip']!r}")
    scales = cfg["tta"]["scales"]
    if (not scales or isinstance(scales, str)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scales)):
        raise ConfigError(f"tta.scales must be a non-empty list of positive numbers, got {scales!r}")
    inference = cfg["inference"]
    mode, window, stride = inference["mode"], inference["window"], inference["stride"]
    choice(mode, "inference.mode", INFERENCE_MODES)
    for key, value in (("inference.window", window), ("inference.stride", stride)):
        if value is not None and (len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value)):
            raise ConfigError(f"{key} must be null or [height, width] in pixels, got {value!r}")
    if window is not None and stride is not None and any(s > w for s, w in zip(stride, window)):
        raise ConfigError(f"inference.stride {list(stride)} must not exceed inference.window {list(window)}: "
                          "pixels between windows would get no prediction")
    choice(inference.get("accumulate", "float32"), "inference.accumulate", list(ACCUMULATE))


def validate_loader(cfg: MutableMapping) -> None:
    conform(cfg, LoaderConfig)
    number(cfg["batch_size"], "batch_size", integer=True)
    number(cfg["num_workers"], "num_workers", strict=False, integer=True)
    excluded_classes(cfg.get("metrics", {}).get("exclude_classes"))


def inference_kwargs(cfg: Mapping, default_window: Optional[Sequence[int]]) -> Dict:
    """Keyword arguments of ``seg.engine.inference.segment``.

    The window defaults to ``default_window`` (the training crop size); a ``null`` stride is ``segment``'s
    default (two thirds of the window). In whole-image mode they are what an image too large for the memory switches
    to (``seg.engine.inference.fit_to_memory``); ``segment`` ignores them there.
    """
    inference = cfg["inference"]
    window, stride = inference["window"], inference["stride"]
    if inference["mode"] == "slide" and window is None and default_window is None:
        raise ConfigError("inference.mode=slide needs inference.window=[height,width] here (the model does not "
                          "record its training crop size)")
    window = window if window is not None else default_window
    window = tuple(window) if window is not None else None
    stride = tuple(stride) if stride is not None else None
    return dict(scales=tuple(float(s) for s in cfg["tta"]["scales"]), flip=cfg["tta"]["flip"],
                mode=inference["mode"], window=window, stride=stride,
                accumulate=ACCUMULATE[inference.get("accumulate", "float32")])


def flatten(config: Mapping, prefix: str = "") -> Dict[str, Any]:
    """``{"train.lr": 0.01, ...}`` from a nested config (dotted keys, as on the command line)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def overwrite_flag(cfg: Mapping) -> bool:
    """``overwrite`` (``seg.outputs.check_outputs``): true or false; false where a config lacks it."""
    value = cfg.get("overwrite", False)
    if not isinstance(value, bool):
        raise ConfigError(f"overwrite must be true or false, got {value!r}")
    return value


def training_inputs(cfg: Any) -> Dict[str, Optional[str]]:
    """What a training reads besides ``resume`` (``seg.outputs.run_outputs``), by key: ``dataset.root``,
    ``model.weights`` and a ``backbone.pretrained`` file."""
    plain = to_plain(cfg, throw_on_missing=False)
    pretrained = plain.get("backbone", {}).get("pretrained")
    return {"dataset.root": plain.get("dataset", {}).get("root"),
            "model.weights": plain.get("model", {}).get("weights"),
            "backbone.pretrained": None if pretrained in ("imagenet", "none") else pretrained}


def validate_export(cfg: MutableMapping) -> None:
    conform(cfg, ExportConfig)
    require(cfg, "ckpt", "python scripts/export.py ckpt=outputs/<run>/checkpoints/best.pt output=model.ts")
    require(cfg, "output", "python scripts/export.py ckpt=PATH output=model.ts [format=torchscript|onnx|export]")
    choice(cfg["format"], "format", EXPORT_FORMATS)
    check_output_stride(cfg["os"], optional=True)
    choice(cfg.get("weights", "auto"), "weights", WEIGHT_CHOICES)
    sizes = cfg["check"]["sizes"]
    if not sizes or not all(len(s) == 2 and all(isinstance(v, int) and v >= 32 for v in s) for s in sizes):
        raise ConfigError(f"check.sizes must be a list of [height, width] pairs of at least 32 pixels, got {sizes!r}")
    for key in ("rtol", "atol"):
        if key in cfg["check"]:
            number(cfg["check"][key], f"check.{key}", strict=False)


def validate_predict(cfg: MutableMapping) -> None:
    """predict.py's keys, ``validate_inference``'s included."""
    for key in ("ckpt", "input", "output"):
        require(cfg, key, "python scripts/predict.py ckpt=PATH input=IMAGE_FOLDER_OR_VIDEO output=FOLDER")
    validate_inference(cfg)
    choice(cfg["format"], "format", PREDICT_FORMATS)
    for key in ("probs", "probs_npy"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key} must be true or false, got {cfg[key]!r}")
    if cfg["probs_npy"] and not cfg["probs"]:
        raise ConfigError("probs_npy=true needs probs=true")
    number(cfg["batch_size"], "batch_size", integer=True)
    if cfg["max_image_pixels"] is not None:
        number(cfg["max_image_pixels"], "max_image_pixels", integer=True)
