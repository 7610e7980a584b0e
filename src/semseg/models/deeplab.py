"""DeepLabV3 and DeepLabV3+: atrous convolution and atrous spatial pyramid pooling.

Chen, Papandreou, Schroff and Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017 — https://arxiv.org/abs/1706.05587 (DeepLabV3)

Chen, Zhu, Papandreou, Schroff and Adam, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018 — https://arxiv.org/abs/1802.02611
(DeepLabV3+)

The backbone trades its last strides for dilation (output stride 16 or 8), and ASPP
looks at the deepest map through parallel branches — a 1x1 conv, three 3x3 convs with
atrous rates 6/12/18 (doubled to 12/24/36 at output stride 8, so they span the same
image area) and global image pooling — each 256 channels with BN and ReLU, then
projected back to 256 by a 1x1 conv with dropout 0.5. DeepLabV3's head is
torchvision's ``DeepLabHead`` (ASPP, 3x3 conv, BN, ReLU, 1x1 classifier); DeepLabV3+
adds a decoder that fuses the ASPP output, up-sampled, with a 48-channel projection
of a stride-4 (ResNet ``layer1``) or stride-8 (MobileNetV3 ``low``) map.

Layer order and names follow torchvision, so ``deeplabv3_resnet50/101`` and
``deeplabv3_mobilenet_v3_large`` checkpoints load key for key. torchvision's MobileNet
model runs at output stride 16 yet keeps the rates 12/24/36; ``deeplabv3`` on
``mobilenet_v3_large`` does the same so those weights compute the same function.

BatchNorm in the image-pooling branch sees one value per image: train with batches of
at least 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from semseg.backbones import Backbone, create_backbone
from semseg.layers import ConvBNAct, resize_to
from semseg.models.base import SegmentationModel
from semseg.models.heads import TORCHVISION_AUX_WEIGHT, FCNHead, SimpleSegmentationModel, check_choice
from semseg.registry import register_model

DeepLabBackbone = Literal["resnet50", "resnet18", "resnet34", "resnet101", "mobilenet_v3_large"]
PAPER_RATES_OS16 = (6, 12, 18)
TORCHVISION_MOBILENET_RATES = (12, 24, 36)
# Which backbone map feeds ASPP, the v3+ decoder and the auxiliary head.
_RESNET_TAPS = {"out": "layer4", "low": "layer1", "aux": "layer3"}
_MOBILENET_TAPS = {"out": "out", "low": "low", "aux": "low"}


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv + BN + ReLU, broadcast back to the map's size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(super().forward(x), x)


class ASPP(nn.Module):
    """1x1 branch, one 3x3 branch per atrous rate, image pooling; concatenated and projected to ``out_channels``."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                ConvBNAct(in_channels, out_channels, 1),
                *(ConvBNAct(in_channels, out_channels, 3, dilation=r) for r in rates),
                ASPPPooling(in_channels, out_channels),
            ]
        )
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, 3x3 conv 256 + BN + ReLU, 1x1 classifier (torchvision's indices: ``0`` ASPP, ``4`` classifier)."""

    def __init__(self, in_channels: int, num_classes: int, *, rates: Sequence[int]) -> None:
        super().__init__(
            ASPP(in_channels, rates),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1),
        )


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deep map, up-sampled and concatenated with a 48-channel projection of the low-level
    map, then two 3x3 convs and a 1x1 classifier."""

    def __init__(self, in_channels: int, low_channels: int, num_classes: int, *, rates: Sequence[int]) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, rates)
        # Few channels so the low-level map informs boundaries without outweighing ASPP's 256.
        self.low_project = ConvBNAct(low_channels, 48, 1)
        self.fuse = nn.Sequential(ConvBNAct(256 + 48, 256, 3), ConvBNAct(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low_project(low)
        x = torch.cat([resize_to(self.aspp(high), low), low], dim=1)
        return self.classifier(self.fuse(x))


class DeepLabV3(SimpleSegmentationModel):
    """Atrous backbone -> DeepLabHead -> bilinear to input; optional aux FCNHead."""


class DeepLabV3Plus(SegmentationModel):
    """Atrous backbone -> DeepLabV3PlusHead(deep map, low-level map) -> bilinear to input; optional aux FCNHead."""

    def __init__(
        self,
        backbone: Backbone,
        classifier: DeepLabV3PlusHead,
        aux_classifier: nn.Module | None = None,
        *,
        taps: dict[str, str],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.taps = dict(taps)
        self.aux_weight = TORCHVISION_AUX_WEIGHT if aux_classifier is not None else 0.0

    def _main(self, x: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return resize_to(self.classifier(features[self.taps["out"]], features[self.taps["low"]]), x)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        result = {"out": self._main(x, features)}
        if self.aux_classifier is not None:
            result["aux"] = resize_to(self.aux_classifier(features[self.taps["aux"]]), x)
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._main(x, self.backbone(x))


def _atrous_backbone(
    name: str, backbone: str, output_stride: int | None, default_stride: int, weights: str | None, in_channels: int
) -> tuple[Backbone, int, dict[str, str]]:
    check_choice(name, "backbone", backbone, get_args(DeepLabBackbone))
    mobilenet = backbone == "mobilenet_v3_large"
    if output_stride is None:
        output_stride = 16 if mobilenet else default_stride
    check_choice(f"{name} ({backbone})", "output_stride", output_stride, (16,) if mobilenet else (8, 16))
    trunk = create_backbone(backbone, output_stride=output_stride, weights=weights, in_channels=in_channels)
    return trunk, output_stride, _MOBILENET_TAPS if mobilenet else _RESNET_TAPS


def _paper_rates(output_stride: int) -> tuple[int, ...]:
    return tuple(r * 16 // output_stride for r in PAPER_RATES_OS16)


@register_model
def deeplabv3(
    *,
    num_classes: int,
    backbone: DeepLabBackbone = "resnet50",
    backbone_weights: str | None = None,
    aux: bool = False,
    output_stride: int | None = None,
    in_channels: int = 3,
) -> DeepLabV3:
    """DeepLabV3 as torchvision builds it (their checkpoints load, aux head or not).

    ``output_stride``: 8 or 16 for ResNets (default 8, as torchvision), 16 for MobileNetV3.
    ``aux=True`` adds an FCNHead on layer3 (MobileNet: the stride-8 ``low`` map), loss weight 0.5.
    """
    trunk, stride, taps = _atrous_backbone("deeplabv3", backbone, output_stride, 8, backbone_weights, in_channels)
    rates = TORCHVISION_MOBILENET_RATES if backbone == "mobilenet_v3_large" else _paper_rates(stride)
    head = DeepLabHead(trunk.feature_info[taps["out"]].channels, num_classes, rates=rates)
    aux_head = FCNHead(trunk.feature_info[taps["aux"]].channels, num_classes) if aux else None
    return DeepLabV3(trunk, head, aux_head, out_feature=taps["out"], aux_feature=taps["aux"] if aux else None)


@register_model
def deeplabv3plus(
    *,
    num_classes: int,
    backbone: DeepLabBackbone = "resnet50",
    backbone_weights: str | None = None,
    aux: bool = False,
    output_stride: int | None = None,
    in_channels: int = 3,
) -> DeepLabV3Plus:
    """DeepLabV3+ (ASPP + low-level decoder); ``output_stride`` 16 (default, the paper's) or 8 for ResNets."""
    trunk, stride, taps = _atrous_backbone("deeplabv3plus", backbone, output_stride, 16, backbone_weights,
                                           in_channels)
    info = trunk.feature_info
    head = DeepLabV3PlusHead(
        info[taps["out"]].channels, info[taps["low"]].channels, num_classes, rates=_paper_rates(stride)
    )
    aux_head = FCNHead(info[taps["aux"]].channels, num_classes) if aux else None
    return DeepLabV3Plus(trunk, head, aux_head, taps=taps)
