"""What every backbone declares, so that any head can sit on any backbone.

A backbone maps images ``(N, in_channels, H, W)`` (3 channels unless built with another
``in_channels``) to a dict of feature maps, and ``backbone.feature_info`` names the same
keys, shallow to deep, with each map's channels and nominal stride (input size / feature
size, dilation accounted for).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and nominal stride of one feature map a backbone returns."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: ``forward`` returns ``{name: feature}`` for every name in ``feature_info``.

    ``feature_info`` is ordered shallow to deep, so its last entry is the deepest map.
    """

    feature_info: dict[str, FeatureInfo]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError
