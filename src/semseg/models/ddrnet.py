"""DDRNet: deep dual-resolution networks for real-time semantic segmentation.

Hong et al., "Deep Dual-resolution Networks for Real-time and Accurate Semantic
Segmentation of Road Scenes", 2021 — https://arxiv.org/abs/2101.06085 (Pan et al.,
IEEE T-ITS 2022).

A ResNet-like trunk splits after stride 8 into two branches that run side by side: a
high-resolution branch that stays at 1/8 and a low-resolution one that keeps halving
(1/16, 1/32, 1/64). After each stage they exchange information both ways — the high
branch is strided down and *added* to the low one ("down3"/"down4"), the low branch is
compressed by a 1x1 conv, bilinearly up-sampled and added to the high one
("compression3"/"compression4"). The 1/64 map goes through DAPPM (deep aggregation
pyramid pooling: average pools of 5/9/17 px and global, fused hierarchically), is
up-sampled to 1/8 and added to the high branch, and a small head classifies at 1/8.
For training, an auxiliary head reads the high branch after stage 3 (loss weight 0.4).

Module names and the order of every layer follow the authors' code (ydhongHIT/DDRNet),
including its habit of ending each stage without its last ReLU (applied by the caller),
so that the papers' parameter counts hold: 5.7M for ``ddrnet_23_slim``, 20.1M for
``ddrnet_23`` (19 classes).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from semseg.layers import he_init_, resize_to
from semseg.models.base import SegmentationModel
from semseg.registry import register_model

# The paper: "the weight of the auxiliary loss is set to 0.4".
DDRNET_AUX_WEIGHT = 0.4


class BasicBlock(nn.Module):
    """ResNet's two-3x3 block; ``no_relu`` leaves the final ReLU to the caller (the stage's last block)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 no_relu: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + identity
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 block with expansion 2 (the authors' choice, not ResNet's 4); no final ReLU by default."""

    expansion = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 no_relu: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + identity
        return out if self.no_relu else self.relu(out)


def make_stage(block: type[BasicBlock | Bottleneck], inplanes: int, planes: int, blocks: int,
               stride: int = 1) -> nn.Sequential:  # fmt: skip
    """``blocks`` blocks, the first strided (with a 1x1 projection when shapes change), the last without ReLU."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    for i in range(1, blocks):
        layers.append(block(planes * block.expansion, planes, no_relu=i == blocks - 1))
    return nn.Sequential(*layers)


def _pre_act_conv(in_channels: int, out_channels: int, kernel_size: int = 1) -> list[nn.Module]:
    """BN -> ReLU -> conv (no bias): DAPPM's and the head's pre-activation ordering."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
    return [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), conv]


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module.

    Context at five scales (the map itself, average pools of 5/9/17 px with strides 2/4/8,
    and a global pool), each up-sampled and added to the previous scale's output before
    its own 3x3 conv — a hierarchical fusion — then concatenated, compressed to
    ``out_channels`` and added to a 1x1 shortcut.
    """

    def __init__(self, in_channels: int, branch_channels: int, out_channels: int) -> None:
        super().__init__()
        self.scale1 = nn.Sequential(nn.AvgPool2d(5, stride=2, padding=2), *_pre_act_conv(in_channels, branch_channels))
        self.scale2 = nn.Sequential(nn.AvgPool2d(9, stride=4, padding=4), *_pre_act_conv(in_channels, branch_channels))
        self.scale3 = nn.Sequential(nn.AvgPool2d(17, stride=8, padding=8), *_pre_act_conv(in_channels, branch_channels))
        self.scale4 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_pre_act_conv(in_channels, branch_channels))
        self.scale0 = nn.Sequential(*_pre_act_conv(in_channels, branch_channels))
        for i in range(1, 5):
            setattr(self, f"process{i}", nn.Sequential(*_pre_act_conv(branch_channels, branch_channels, 3)))
        self.compression = nn.Sequential(*_pre_act_conv(branch_channels * 5, out_channels))
        self.shortcut = nn.Sequential(*_pre_act_conv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.scale0(x)]
        for i in range(1, 5):
            pooled = resize_to(getattr(self, f"scale{i}")(x), x)
            outs.append(getattr(self, f"process{i}")(pooled + outs[-1]))
        return self.compression(torch.cat(outs, 1)) + self.shortcut(x)


class SegmentHead(nn.Module):
    """BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 classifier (with bias), at the input's resolution."""

    def __init__(self, in_channels: int, inter_channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter_channels)
        self.conv2 = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(x)))


class DDRNet(SegmentationModel):
    """Dual-resolution trunk (1/8 high branch, 1/16-1/64 low branch, bilateral fusion) -> DAPPM -> head at 1/8.

    ``planes`` is the stem width (32 for the slim model, 64 for the full one); the high
    branch has ``2 * planes`` channels and the low branch doubles per stage up to
    ``8 * planes`` (``16 * planes`` after the last bottleneck); ``in_channels`` is the number of
    image channels the stem reads.
    """

    def __init__(self, num_classes: int, *, planes: int, layers: tuple[int, int, int, int], spp_planes: int,
                 head_planes: int, aux: bool, in_channels: int = 3) -> None:  # fmt: skip
        super().__init__()
        high = planes * 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, planes, 3, stride=2, padding=1), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=2, padding=1), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.relu = nn.ReLU(inplace=False)  # applied to tensors that are reused afterwards
        self.layer1 = make_stage(BasicBlock, planes, planes, layers[0])
        self.layer2 = make_stage(BasicBlock, planes, planes * 2, layers[1], stride=2)
        self.layer3 = make_stage(BasicBlock, planes * 2, planes * 4, layers[2], stride=2)
        self.layer4 = make_stage(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        self.compression3 = nn.Sequential(nn.Conv2d(planes * 4, high, 1, bias=False), nn.BatchNorm2d(high))
        self.compression4 = nn.Sequential(nn.Conv2d(planes * 8, high, 1, bias=False), nn.BatchNorm2d(high))
        self.down3 = nn.Sequential(nn.Conv2d(high, planes * 4, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(planes * 4))  # fmt: skip
        self.down4 = nn.Sequential(
            nn.Conv2d(high, planes * 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(planes * 4),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes * 4, planes * 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(planes * 8),
        )  # fmt: skip
        self.layer3_ = make_stage(BasicBlock, planes * 2, high, 2)
        self.layer4_ = make_stage(BasicBlock, high, high, 2)
        self.layer5_ = make_stage(Bottleneck, high, high, 1)
        self.layer5 = make_stage(Bottleneck, planes * 8, planes * 8, 1, stride=2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        self.seghead_extra = SegmentHead(high, head_planes, num_classes) if aux else None
        self.final_layer = SegmentHead(planes * 4, head_planes, num_classes)
        self.aux_weight = DDRNET_AUX_WEIGHT if aux else 0.0
        self._init_weights()

    def _init_weights(self) -> None:
        # The authors' initialisation: He (fan_out) for convs, BN to identity.
        he_init_(self, zero_conv_bias=False)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused 1/8 map the head classifies, and the high branch after stage 3 (the aux head's input)."""
        stem = self.layer1(self.conv1(x))
        s8 = self.layer2(self.relu(stem))
        low = self.layer3(self.relu(s8))
        high = self.layer3_(self.relu(s8))
        low, high = low + self.down3(self.relu(high)), high + resize_to(self.compression3(self.relu(low)), high)
        after_stage3 = high
        low = self.layer4(self.relu(low))
        high = self.layer4_(self.relu(high))
        low, high = low + self.down4(self.relu(high)), high + resize_to(self.compression4(self.relu(low)), high)
        high = self.layer5_(self.relu(high))
        low = resize_to(self.spp(self.layer5(self.relu(low))), high)
        return low + high, after_stage3

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fused, after_stage3 = self._features(x)
        outputs = {"out": resize_to(self.final_layer(fused), x)}
        if self.seghead_extra is not None:
            outputs["aux"] = resize_to(self.seghead_extra(after_stage3), x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.final_layer(self._features(x)[0]), x)


@register_model
def ddrnet_23_slim(*, num_classes: int, aux: bool = True, in_channels: int = 3) -> DDRNet:
    """DDRNet-23-slim: 32-channel stem, high branch 64 channels, 5.7M parameters (19 classes)."""
    return DDRNet(num_classes, planes=32, layers=(2, 2, 2, 2), spp_planes=128, head_planes=64, aux=aux,
                  in_channels=in_channels)  # fmt: skip


@register_model
def ddrnet_23(*, num_classes: int, aux: bool = True, in_channels: int = 3) -> DDRNet:
    """DDRNet-23: 64-channel stem, high branch 128 channels, 20.1M parameters (19 classes)."""
    return DDRNet(num_classes, planes=64, layers=(2, 2, 2, 2), spp_planes=128, head_planes=128, aux=aux,
                  in_channels=in_channels)  # fmt: skip
