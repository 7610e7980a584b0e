"""Backbones by name: ``create_backbone("resnet50", output_stride=8, weights=path)``.

One level of lookup onto typed builders that share the signature
``(*, output_stride: int = 32, in_channels: int = 3)``; an unknown name fails with the
list of valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from semseg.backbones.base import Backbone
from semseg.backbones.mobilenet import mobilenet_v3_large
from semseg.backbones.resnet import resnet18, resnet34, resnet50, resnet101
from semseg.backbones.vgg import vgg16, vgg16_bn
from semseg.backbones.weights import load_backbone_weights

_BACKBONES: dict[str, Callable[..., Backbone]] = {
    fn.__name__: fn
    for fn in (resnet18, resnet34, resnet50, resnet101, vgg16, vgg16_bn, mobilenet_v3_large)
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(_BACKBONES)


def create_backbone(
    name: str, *, output_stride: int = 32, weights: str | Path | None = None, in_channels: int = 3
) -> Backbone:
    """Build backbone ``name``, optionally loading ImageNet weights from the local file ``weights``.

    ``output_stride`` is 8, 16 or 32 for ResNets, 16 or 32 for MobileNetV3 and 32 for VGG.
    ``in_channels`` is the number of image channels; RGB ``weights`` are adapted to it.
    """
    try:
        builder = _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; available backbones: {', '.join(list_backbones())}") from None
    backbone = builder(output_stride=output_stride, in_channels=in_channels)
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return backbone
