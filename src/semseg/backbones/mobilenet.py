"""MobileNetV3-Large as a segmentation backbone (for LR-ASPP and DeepLabV3).

Howard et al., "Searching for MobileNetV3", ICCV 2019 — https://arxiv.org/abs/1905.02244

``features`` reproduces torchvision's ``mobilenet_v3_large().features`` module for
module: ``features.0`` the Conv-BN-Hardswish stem, ``features.1..15`` inverted
residuals (``.block`` of Conv-BN-act units and a ``SqueezeExcitation`` with
``fc1``/``fc2``), ``features.16`` the 1x1 conv to 960 channels. torchvision weights
load key for key once ``classifier.*`` is dropped; :func:`remap_timm_keys` renames
timm's ``mobilenetv3_large_100``.

The returned maps are the ones torchvision's segmentation models tap:
``"low"`` (40 channels, stride 8) and ``"out"`` (960 channels, stride 32, or 16 with
``dilated=True``, which swaps the last stage's stride for dilation 2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from semseg.backbones.base import Backbone, FeatureInfo
from semseg.layers import ConvBNAct, he_init_

# torchvision builds its BatchNorms with eps 1e-3 (TensorFlow's default, which the
# reference training used), and its weights must run with it; timm's mobilenetv3_large_100
# was trained with PyTorch's eps. torchvision's momentum of 0.01 is *not* copied: it only
# affects training, and on a segmentation dataset of a few hundred images (tens of steps
# an epoch) running statistics that slow leave eval-mode outputs meaningless for many
# epochs (seen on CamVid: one class predicted everywhere after 2 epochs). PyTorch's 0.1 it is.
TORCHVISION_BN_EPS = 1e-3
TIMM_BN_EPS = 1e-5


class _BlockConfig(NamedTuple):
    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    use_hardswish: bool
    stride: int


# The paper's Table 1, as torchvision's _mobilenet_v3_conf("mobilenet_v3_large") lists it.
_LARGE: tuple[_BlockConfig, ...] = (
    _BlockConfig(16, 3, 16, 16, False, False, 1),
    _BlockConfig(16, 3, 64, 24, False, False, 2),
    _BlockConfig(24, 3, 72, 24, False, False, 1),
    _BlockConfig(24, 5, 72, 40, True, False, 2),
    _BlockConfig(40, 5, 120, 40, True, False, 1),
    _BlockConfig(40, 5, 120, 40, True, False, 1),
    _BlockConfig(40, 3, 240, 80, False, True, 2),
    _BlockConfig(80, 3, 200, 80, False, True, 1),
    _BlockConfig(80, 3, 184, 80, False, True, 1),
    _BlockConfig(80, 3, 184, 80, False, True, 1),
    _BlockConfig(80, 3, 480, 112, True, True, 1),
    _BlockConfig(112, 3, 672, 112, True, True, 1),
    _BlockConfig(112, 5, 672, 160, True, True, 2),
    _BlockConfig(160, 5, 960, 160, True, True, 1),
    _BlockConfig(160, 5, 960, 160, True, True, 1),
)
_STEM_CHANNELS = 16
_LAST_CHANNELS = 960

# timm's mobilenetv3_large_100 groups the same 15 blocks into stages of these depths
# (its arch_def); its first block is a DepthwiseSeparableConv, the rest InvertedResiduals,
# and blocks.6.0 is the 1x1 conv to 960 channels.
_TIMM_STAGE_DEPTHS = (1, 2, 3, 4, 2, 3)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never more than 10% down (torchvision's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class SqueezeExcitation(nn.Module):
    """Channel gating from globally pooled features, with a hard-sigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = _make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when there is nothing to expand), depthwise conv, optional SE, 1x1 project."""

    def __init__(self, cfg: _BlockConfig, *, dilation: int = 1) -> None:
        super().__init__()
        act = nn.Hardswish if cfg.use_hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.in_channels:
            layers.append(ConvBNAct(cfg.in_channels, cfg.expanded, 1, act=act))
        # As in torchvision, a dilated block keeps full resolution instead of striding.
        stride = 1 if dilation > 1 else cfg.stride
        layers.append(
            ConvBNAct(
                cfg.expanded, cfg.expanded, cfg.kernel,
                stride=stride, dilation=dilation, groups=cfg.expanded, act=act,
            )
        )  # fmt: skip
        if cfg.use_se:
            layers.append(SqueezeExcitation(cfg.expanded))
        layers.append(ConvBNAct(cfg.expanded, cfg.out_channels, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cfg.stride == 1 and cfg.in_channels == cfg.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(Backbone):
    """MobileNetV3-Large ``features`` without the classifier; returns ``"low"`` and ``"out"``.

    ``in_channels`` is the number of image channels the stem conv reads.
    """

    def __init__(self, *, dilated: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(in_channels, _STEM_CHANNELS, 3, stride=2, act=nn.Hardswish)]
        strides = [2]
        # torchvision's stage_indices: the stem, every block that halves the
        # resolution (even when dilated), and the last conv.
        stage_indices = [0]
        last_strided = max(i for i, cfg in enumerate(_LARGE) if cfg.stride > 1)
        for i, cfg in enumerate(_LARGE):
            dilation = 2 if dilated and i >= last_strided else 1
            layers.append(InvertedResidual(cfg, dilation=dilation))
            if cfg.stride > 1:
                stage_indices.append(len(layers) - 1)
            strides.append(strides[-1] * (cfg.stride if dilation == 1 else 1))
        layers.append(ConvBNAct(_LARGE[-1].out_channels, _LAST_CHANNELS, 1, act=nn.Hardswish))
        strides.append(strides[-1])
        stage_indices.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        # The taps of torchvision's lraspp/deeplabv3_mobilenet builders.
        self._low_index, self._out_index = stage_indices[-4], stage_indices[-1]
        low_channels = _LARGE[self._low_index - 1].out_channels
        self.feature_info = {
            "low": FeatureInfo(low_channels, strides[self._low_index]),
            "out": FeatureInfo(_LAST_CHANNELS, strides[self._out_index]),
        }
        set_batch_norm_eps(self, TORCHVISION_BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an unloaded backbone trains like theirs.
        he_init_(self, zero_conv_bias=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._low_index:
                out["low"] = x
        out["out"] = x
        return out


def mobilenet_v3_large(*, output_stride: int = 32, in_channels: int = 3) -> MobileNetV3:
    """MobileNetV3-Large features; ``output_stride=16`` dilates the last stage (``dilated=True``)."""
    if output_stride not in (16, 32):
        raise ValueError(f"MobileNetV3 supports output_stride 16 or 32, got {output_stride!r}")
    return MobileNetV3(dilated=output_stride == 16, in_channels=in_channels)


def set_batch_norm_eps(module: nn.Module, eps: float) -> None:
    """Set ``eps`` of every BatchNorm in ``module``.

    Weights must run with the eps they were trained with for outputs to match the source.
    """
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = eps


def remap_timm_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm ``mobilenetv3_large_100`` keys to ours; keys it does not know pass unchanged."""
    mapping = _timm_module_map()
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        out[f"{mapping[module]}.{param}" if module in mapping else key] = value
    return out


def _timm_module_map() -> dict[str, str]:
    # timm names each conv/bn by role; torchvision numbers the units of ``.block`` in
    # order, so walk each block's units in execution order.
    mapping = {"conv_stem": "features.0.0", "bn1": "features.0.1"}
    timm_blocks = [f"blocks.{s}.{j}" for s, depth in enumerate(_TIMM_STAGE_DEPTHS) for j in range(depth)]
    for n, (timm_name, cfg) in enumerate(zip(timm_blocks, _LARGE, strict=True)):
        if cfg.expanded == cfg.in_channels:  # timm DepthwiseSeparableConv
            before_se, after_se = [("conv_dw", "bn1")], [("conv_pw", "bn2")]
        else:  # timm InvertedResidual
            before_se, after_se = [("conv_pw", "bn1"), ("conv_dw", "bn2")], [("conv_pwl", "bn3")]
        ours = f"features.{n + 1}.block"
        # None stands for the SqueezeExcitation unit.
        units: list[tuple[str, str] | None] = [*before_se, None, *after_se] if cfg.use_se else [*before_se, *after_se]
        for index, unit in enumerate(units):
            if unit is None:
                mapping[f"{timm_name}.se.conv_reduce"] = f"{ours}.{index}.fc1"
                mapping[f"{timm_name}.se.conv_expand"] = f"{ours}.{index}.fc2"
            else:
                mapping[f"{timm_name}.{unit[0]}"] = f"{ours}.{index}.0"
                mapping[f"{timm_name}.{unit[1]}"] = f"{ours}.{index}.1"
    last = f"blocks.{len(_TIMM_STAGE_DEPTHS)}.0"
    mapping[f"{last}.conv"] = f"features.{len(_LARGE) + 1}.0"
    mapping[f"{last}.bn1"] = f"features.{len(_LARGE) + 1}.1"
    return mapping
