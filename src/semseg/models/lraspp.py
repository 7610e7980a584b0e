"""LR-ASPP: the Lite Reduced ASPP segmentation head of MobileNetV3.

Howard et al., "Searching for MobileNetV3", ICCV 2019 — https://arxiv.org/abs/1905.02244

A cheap replacement for ASPP on a mobile backbone. The last MobileNetV3 stage is
dilated (output stride 16); its 960-channel map goes through a 1x1 conv + BN + ReLU
to 128 channels, gated per channel by a squeeze-and-excitation-like branch (global
pool, 1x1 conv, sigmoid). The gated map is up-sampled to the stride-8 map (40
channels), and both are classified by 1x1 convs and summed; the sum is up-sampled to
the input. This is torchvision's ``lraspp_mobilenet_v3_large`` (3.2M parameters), with
its module names, so its checkpoints load key for key.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from semseg.backbones import MobileNetV3, load_backbone_weights, mobilenet_v3_large
from semseg.layers import ConvBNAct, resize_to
from semseg.models.base import SegmentationModel
from semseg.models.heads import check_choice
from semseg.registry import register_model

LRASPPBackbone = Literal["mobilenet_v3_large"]


class LRASPPHead(nn.Module):
    """``low_classifier(low) + high_classifier(up(cbr(high) * scale(high)))`` at the low map's size."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128) -> None:
        super().__init__()
        self.cbr = ConvBNAct(high_channels, inter_channels, 1)
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = resize_to(self.cbr(high) * self.scale(high), low)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(SegmentationModel):
    """Dilated MobileNetV3 -> LRASPPHead(low = stride 8, high = stride 16) -> bilinear to input."""

    def __init__(self, backbone: MobileNetV3, num_classes: int, *, inter_channels: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        info = backbone.feature_info
        self.classifier = LRASPPHead(info["low"].channels, info["out"].channels, num_classes, inter_channels)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"out": resize_to(self.classifier(features["low"], features["out"]), x)}


@register_model
def lraspp(
    *,
    num_classes: int,
    backbone: LRASPPBackbone = "mobilenet_v3_large",
    backbone_weights: str | None = None,
    in_channels: int = 3,
) -> LRASPP:
    """LR-ASPP on dilated MobileNetV3-Large (torchvision's ``lraspp_mobilenet_v3_large``); no auxiliary head."""
    check_choice("lraspp", "backbone", backbone, get_args(LRASPPBackbone))
    trunk = mobilenet_v3_large(output_stride=16, in_channels=in_channels)
    if backbone_weights is not None:
        load_backbone_weights(trunk, backbone_weights)
    return LRASPP(trunk, num_classes)
