"""Load torchvision segmentation checkpoints into the matching semseg models.

``fcn`` (ResNet-50/101), ``deeplabv3`` (ResNet-50/101, MobileNetV3-Large) and ``lraspp``
use torchvision's module names, so ``fcn_resnet50``, ``deeplabv3_resnet50``,
``deeplabv3_mobilenet_v3_large`` and ``lraspp_mobilenet_v3_large`` state dicts load
key for key, with one rename: torchvision wraps MobileNetV3's ``features`` directly in
an ``IntermediateLayerGetter`` (``backbone.0.0.weight``) where our backbone keeps the
``features`` name (``backbone.features.0.0.weight``). Nothing is downloaded.

Build the model with the checkpoint's class count (21 for the COCO-with-VOC-labels
weights) and ``aux=True`` to keep its auxiliary head; with ``aux=False`` the
checkpoint's ``aux_classifier.*`` is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from semseg.backbones import MobileNetV3, read_state_dict
from semseg.backbones.weights import load_checked

_MOBILENET_KEY = re.compile(r"^backbone\.(\d+)\.")


def remap_torchvision_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision segmentation keys -> ``model``'s keys (only MobileNet backbones differ)."""
    if isinstance(getattr(model, "backbone", None), MobileNetV3):
        return {_MOBILENET_KEY.sub(r"backbone.features.\1.", k): v for k, v in state_dict.items()}
    return dict(state_dict)


def load_torchvision_segmentation(model: nn.Module, weights: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load a torchvision segmentation state dict (or a local file of one) into ``model``, strictly.

    Raises ``ValueError`` naming missing, unexpected and wrongly shaped keys; only
    BatchNorm ``num_batches_tracked`` may be absent, and ``aux_classifier.*`` is ignored
    when ``model`` has no auxiliary head. The RGB first conv is adapted to the model's ``in_channels``.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "the state dict"
    state_dict = read_state_dict(weights) if isinstance(weights, (str, Path)) else dict(weights)
    state_dict = remap_torchvision_keys(model, state_dict)
    if getattr(model, "aux_classifier", None) is None:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("aux_classifier.")}

    load_checked(model, state_dict, f"torchvision weights in {source}")

