"""SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation.

Badrinarayanan, Kendall and Cipolla, TPAMI 2017 — https://arxiv.org/abs/1511.00561

The encoder is VGG16-BN's 13 convolutions; each 2x2 max-pool remembers *where* its
maxima were (the "pooling indices", kept as which cell of each window won:
:func:`semseg.layers.max_pool_switches`). The decoder mirrors the encoder: it unpools
with those indices — placing each value back at its argmax and zeros elsewhere, so
boundaries stay sharp without storing whole encoder maps as U-Net does — and densifies
the sparse maps with conv-BN-ReLU stacks. Unpooling to the recorded pre-pool size makes
odd sizes work: a 97-row map pooled to 48 unpools back to 97 (see
:func:`semseg.layers.max_unpool`, which also keeps the model exportable).

SegNet-Basic, the paper's smaller model for its analysis, has four encoder and four
decoder stages of 64 channels with 7x7 convolutions; as in the authors' SegNet-Basic
definition its decoder convs have BatchNorm but no ReLU (we leave out the local
response normalisation on the input).
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.backbones import VGG, load_backbone_weights, vgg16_bn
from semseg.layers import ConvBNAct, max_pool_switches, max_unpool
from semseg.models.base import SegmentationModel
from semseg.registry import register_model


class SegNet(SegmentationModel):
    """VGG16-BN encoder with index-remembering pools; mirrored decoder of unpool + conv-BN-ReLU stacks.

    ``decoder[0]`` is the deepest decoder stage. Each stage has as many convs as its
    encoder stage; the last conv of a stage narrows to the next shallower stage's width,
    and in the shallowest stage that last conv is the 3x3 ``classifier``.
    """

    def __init__(self, backbone: VGG, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        # Encoder stage widths and conv counts, read off the backbone: (64, 2), (128, 2), (256, 3), ...
        stages = [
            (info.channels, sum(isinstance(m, nn.Conv2d) for m in backbone.features[start:pool]))
            for info, (start, pool) in zip(backbone.feature_info.values(), backbone.stage_bounds())
        ]
        decoder = []
        for i in reversed(range(len(stages))):
            width, convs = stages[i]
            out = stages[i - 1][0] if i > 0 else None
            layers = [ConvBNAct(width, width, 3) for _ in range(convs - 1)]
            if out is not None:
                layers.append(ConvBNAct(width, out, 3))
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)
        self.classifier = nn.Conv2d(stages[0][0], num_classes, 3, padding=1)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes, indices = [], []
        for stage in range(len(self.decoder)):
            x = self.backbone.forward_stage(x, stage)
            sizes.append(x.shape[-2:])
            x, index = max_pool_switches(x)
            indices.append(index)
        for block, size, index in zip(self.decoder, reversed(sizes), reversed(indices)):
            x = block(max_unpool(x, index, size))
        return {"out": self.classifier(x)}


class SegNetBasic(SegmentationModel):
    """Four stages of 7x7 conv(64)-BN-ReLU + pool, four of unpool + 7x7 conv(64)-BN, then a 1x1 classifier."""

    def __init__(self, num_classes: int, *, channels: int = 64, depth: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            ConvBNAct(in_channels if i == 0 else channels, channels, 7) for i in range(depth)
        )
        self.decoder = nn.ModuleList(ConvBNAct(channels, channels, 7, act=None) for _ in range(depth))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes, indices = [], []
        for conv in self.encoder:
            x = conv(x)
            sizes.append(x.shape[-2:])
            x, index = max_pool_switches(x)
            indices.append(index)
        for conv, size, index in zip(self.decoder, reversed(sizes), reversed(indices)):
            x = conv(max_unpool(x, index, size))
        return {"out": self.classifier(x)}


@register_model
def segnet(*, num_classes: int, backbone_weights: str | None = None, in_channels: int = 3) -> SegNet:
    """SegNet (29.5M parameters at 21 classes). ``backbone_weights``: local ImageNet VGG16-BN weights."""
    backbone = vgg16_bn(in_channels=in_channels)
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    return SegNet(backbone, num_classes)


@register_model
def segnet_basic(*, num_classes: int, in_channels: int = 3) -> SegNetBasic:
    """SegNet-Basic: 4 + 4 stages of 64-channel 7x7 convolutions (1.4M parameters)."""
    return SegNetBasic(num_classes, in_channels=in_channels)
