"""PSPNet: Pyramid Scene Parsing Network.

Zhao, Shi, Qi, Wang and Jia, CVPR 2017 — https://arxiv.org/abs/1612.01105

A dilated ResNet (output stride 8) is followed by a pyramid pooling module: the
feature map is average-pooled to 1x1, 2x2, 3x3 and 6x6 bins, each reduced by a 1x1
conv to ``1/N`` of the channels (N = 4 levels), up-sampled back and concatenated with
the map itself, so every pixel sees global and sub-region context. A 3x3 conv, dropout
and a 1x1 classifier finish the head. Training adds an auxiliary FCN head on layer3
whose loss the paper weighs by 0.4.

Export: ``nn.AdaptiveAvgPool2d(6)`` on a 13x17 map uses bins of uneven size, which
ONNX cannot express with dynamic height and width. :class:`AdaptiveAvgPool` computes
the same bins (PyTorch's rule: ``floor(i*n/b)`` to ``ceil((i+1)*n/b)``) as two
averaging matrices built from the input's shape, so it is two matmuls in the graph.

BatchNorm on the 1x1 bin sees one value per image: train with batches of at least 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from semseg.backbones import create_backbone
from semseg.layers import ConvBNAct, resize_to
from semseg.models.heads import FCNHead, SimpleSegmentationModel, check_choice
from semseg.registry import register_model

PSPBackbone = Literal["resnet50", "resnet18", "resnet34", "resnet101"]
PSP_AUX_WEIGHT = 0.4


def adaptive_pooling_matrix(size: int | torch.Tensor, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``(bins, size)`` matrix; row ``i`` averages positions ``floor(i*size/bins)`` to ``ceil((i+1)*size/bins) - 1``."""
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    j = torch.arange(size, device=like.device)
    inside = ((j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])).to(like.dtype)
    return inside / inside.sum(dim=1, keepdim=True)


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` as ``rows @ x @ cols^T``: equal results, exportable with dynamic H/W."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = adaptive_pooling_matrix(x.shape[-2], self.bins, x)
        cols = adaptive_pooling_matrix(x.shape[-1], self.bins, x)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class PyramidPooling(nn.Module):
    """Concatenate ``x`` with, per bin size, pool -> 1x1 conv (``in / len(bins)``) + BN + ReLU -> bilinear back."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(nn.Sequential(AdaptiveAvgPool(b), ConvBNAct(in_channels, reduced, 1)) for b in bins)
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(resize_to(stage(x), x) for stage in self.stages)], dim=1)


class PSPHead(nn.Sequential):
    """PyramidPooling, 3x3 conv 512 + BN + ReLU, Dropout(0.1), 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, *, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        pyramid = PyramidPooling(in_channels, bins)
        super().__init__(
            pyramid,
            ConvBNAct(pyramid.out_channels, 512, 3),
            nn.Dropout(0.1),
            nn.Conv2d(512, num_classes, 1),
        )


class PSPNet(SimpleSegmentationModel):
    """Dilated ResNet -> PSPHead on layer4 -> bilinear to input; aux FCNHead on layer3 (weight 0.4)."""


@register_model
def pspnet(
    *,
    num_classes: int,
    backbone: PSPBackbone = "resnet50",
    backbone_weights: str | None = None,
    aux: bool = True,
    bins: tuple[int, ...] = (1, 2, 3, 6),
    in_channels: int = 3,
) -> PSPNet:
    """PSPNet on a dilated ResNet (output stride 8).

    ``aux`` (on by default, as the paper trains) adds the layer3 head; ``bins`` are the pyramid's pooled sizes.
    """
    check_choice("pspnet", "backbone", backbone, get_args(PSPBackbone))
    bins = tuple(bins)
    if not bins or any(not isinstance(b, int) or b < 1 for b in bins):
        raise ValueError(f"pspnet bins must be positive ints, got {bins!r}")
    trunk = create_backbone(backbone, output_stride=8, weights=backbone_weights, in_channels=in_channels)
    head = PSPHead(trunk.feature_info["layer4"].channels, num_classes, bins=bins)
    aux_head = FCNHead(trunk.feature_info["layer3"].channels, num_classes) if aux else None
    return PSPNet(
        trunk, head, aux_head,
        out_feature="layer4", aux_feature="layer3" if aux else None, aux_weight=PSP_AUX_WEIGHT,
    )  # fmt: skip
