"""Typed training configs: dataclasses, loaded from YAML with dotted command-line overrides.

A recipe is a flat YAML file whose sections mirror :class:`TrainConfig`; an optional
``base:`` names one other recipe to start from (relative to the file). Overrides such as
``--optim.lr=0.01`` are parsed as YAML values. Unknown keys and values of the wrong
type fail with the key's full dotted name and what was expected, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from semseg.typecheck import OptionError, check_value

MAX_INFER_SCALE = 4.0  # data.infer_scale above this multiplies inference memory by over 16


@dataclass
class ModelConfig:
    """Arguments of :func:`semseg.create_model` (``num_classes`` comes from the dataset)."""

    name: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)
    # Fine-tuning: start from a semseg checkpoint, a shipped model's name or a torchvision
    # segmentation .pth; tensors whose shapes differ (the classifier) start fresh and are listed.
    init_from: str | None = None


@dataclass
class DataConfig:
    """Which dataset, which splits, and the training crops."""

    dataset: str = "shapes"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] | None = None  # [H, W]; None trains on whole images
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])
    # Validation and every inference command resize inputs by this factor before the model and its
    # output back (stored in the checkpoint): e.g. 2 for a 1/8-resolution model on small images.
    infer_scale: float = 1.0
    color_jitter: bool = False  # random brightness/contrast/saturation on training crops
    cache: bool = False  # decode the training images once and keep them in RAM (at most a quarter of it)
    batch_size: int = 8
    val_batch_size: int = 1
    workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)
    val_options: dict[str, Any] | None = None  # the val split's own dataset options (None: the same as options)


@dataclass
class OptimConfig:
    """Optimizer and LR schedule: SGD + poly as the papers, or AdamW + cosine."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    power: float = 0.9
    warmup_steps: int = 0


@dataclass
class LossConfig:
    """Main loss; ``dice_weight`` > 0 adds that much Dice loss to it."""

    name: Literal["ce", "ohem", "focal", "dice", "lovasz"] = "ce"
    class_weights: list[float] | None = None
    label_smoothing: float = 0.0  # cross-entropy only
    dice_weight: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # the loss's own: ohem threshold/min_kept, focal gamma


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015): the student also matches a trained teacher's
    per-pixel class probabilities, softened by ``temperature``, on the same training crops."""

    teacher: str | None = None  # a semseg checkpoint or a shipped model's name; None: off
    weight: float = 1.0  # the distillation term's weight beside the main loss
    temperature: float = 1.0  # > 1 shows the student the teacher's second choices; the term is scaled by its square


@dataclass
class TrainConfig:
    """Everything ``semseg train`` needs; ``out`` receives checkpoints, logs and plots."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    epochs: int = 10
    repeats: int = 1  # an epoch visits every training sample this many times (small datasets)
    val_every: int = 1  # validate every N epochs, and always after the last one
    seed: int = 0
    out: str = "runs/experiment"
    tensorboard: bool = False  # also write the logged metrics to <out>/tensorboard/ (pip install "semseg[tensorboard]")
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_accum: int = 1
    clip_grad_norm: float | None = None
    max_nonfinite: int = 10
    ignore_index: int = 255
    sync_bn: bool = False  # SyncBatchNorm across processes; only used when training on more than one
    dist_timeout_s: float = 600.0  # under torchrun: a collective waiting longer (a dead peer) fails instead of hanging
    channels_last: bool = True  # NHWC weights and batches: ~2x faster convolutions on CPUs (docs/benchmarks.md)
    # Exponential moving average of the weights (and BatchNorm statistics), this decay per optimizer
    # step; validation and the checkpoints use the average. 0: off. E.g. 0.995 averages ~200 steps.
    ema: float = 0.0
    # Warm the average up: step n uses decay min(ema, (1 + n) / (10 + n)) (TensorFlow's
    # ExponentialMovingAverage with num_updates), so early in a from-scratch run the average
    # follows the model instead of mixing in its random start.
    ema_warmup: bool = False

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs, "repeats": self.repeats, "val_every": self.val_every, "grad_accum": self.grad_accum, "data.batch_size": self.data.batch_size,
            "data.val_batch_size": self.data.val_batch_size, "optim.lr": self.optim.lr,
        }  # fmt: skip
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        at_least_zero = {"data.workers": self.data.workers, "optim.weight_decay": self.optim.weight_decay,
                         "optim.power": self.optim.power, "optim.warmup_steps": self.optim.warmup_steps,
                         "loss.dice_weight": self.loss.dice_weight}  # fmt: skip
        for key, value in at_least_zero.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        if not 0 <= self.optim.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.optim.momentum}")
        if not 0 <= self.loss.label_smoothing < 1:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.loss.label_smoothing}")
        weights = self.loss.class_weights
        if weights is not None and (min(weights, default=0) < 0 or not any(weights)):
            raise ConfigError(f"loss.class_weights must be >= 0 with at least one > 0, got {weights}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"clip_grad_norm must be > 0 (null: no clipping), got {self.clip_grad_norm}")
        if self.max_nonfinite < 1 or self.dist_timeout_s <= 0:
            raise ConfigError(f"max_nonfinite must be >= 1 and dist_timeout_s > 0, got {self.max_nonfinite} and "
                              f"{self.dist_timeout_s}")
        if self.data.crop_size is not None and (len(self.data.crop_size) != 2 or min(self.data.crop_size) < 32):
            raise ConfigError(f"data.crop_size must be [H, W] with both >= 32, got {self.data.crop_size}")
        if len(self.data.scale) != 2 or not 0 < self.data.scale[0] <= self.data.scale[1]:
            raise ConfigError(f"data.scale must be [min, max] with 0 < min <= max, got {self.data.scale}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1) (a decay per step, 0: off), got {self.ema}")
        if not (0 < self.distill.weight < math.inf and 0 < self.distill.temperature < math.inf):
            raise ConfigError(f"distill.weight and distill.temperature must be finite and > 0, got {self.distill.weight} and "
                              f"{self.distill.temperature} (distill.teacher: null turns distillation off)")
        if not 0 < self.data.infer_scale <= MAX_INFER_SCALE:
            raise ConfigError(f"data.infer_scale must be in (0, {MAX_INFER_SCALE}], got {self.data.infer_scale}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable), e.g. to store in a checkpoint."""
        return asdict(self)


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read ``path`` (following one ``base:``), apply ``key.sub=value`` overrides, validate."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form --key.sub=value")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(value)
    return from_dict(TrainConfig, raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The recipe at ``path`` merged over its ``base:`` recipe, if it names one."""
    data = _read_mapping(path)
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_mapping((path.parent / base).resolve())
    if "base" in parent:
        raise ConfigError(f"{path}: its base {base} has a base of its own; one level of base: only")
    return _merge(parent, data)


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_bytes()) or {}  # bytes: PyYAML reads UTF-8 and, by their BOM, UTF-16 files
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; valid keys: "
                          f"{', '.join(prefix + k for k in fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, prefix + name) for name, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """``value`` checked against ``hint`` (see :mod:`semseg.typecheck`); nested dataclasses built."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    try:
        return check_value(hint, value, key)
    except OptionError as exc:
        raise ConfigError(str(exc)) from None
