"""Pieces several papers share: the FCN head, the backbone + head (+ aux head) model, checks.

torchvision's segmentation models are all one shape — a backbone whose deepest map
feeds ``classifier`` and, for training, a shallower map feeds ``aux_classifier``,
both up-sampled bilinearly to the input — and :class:`SimpleSegmentationModel` is that
shape. The attribute names (``backbone``, ``classifier``, ``aux_classifier``) and the
layer order inside :class:`FCNHead` are torchvision's, so their checkpoints load key for
key (see :mod:`semseg.models.torchvision_compat`).
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
from torch import nn

from semseg.backbones import Backbone
from semseg.layers import resize_to
from semseg.models.base import SegmentationModel

# torchvision's reference recipe weighs the auxiliary loss by 0.5 (PSPNet's paper: 0.4).
TORCHVISION_AUX_WEIGHT = 0.5


class FCNHead(nn.Sequential):
    """3x3 conv to ``in/4`` channels, BN, ReLU, Dropout(0.1), 1x1 classifier (torchvision's FCNHead).

    Flat rather than built from ``ConvBNAct`` so the indices (``0`` conv, ``1`` BN,
    ``4`` classifier) are torchvision's state-dict keys. Also the auxiliary head of
    PSPNet and DeepLab.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class SimpleSegmentationModel(SegmentationModel):
    """``classifier(features[out_feature])`` (+ ``aux_classifier(features[aux_feature])``), resized to the input.

    ``forward`` skips the auxiliary head: it only feeds a training loss, so inference
    does not pay for it.
    """

    def __init__(
        self,
        backbone: Backbone,
        classifier: nn.Module,
        aux_classifier: nn.Module | None = None,
        *,
        out_feature: str,
        aux_feature: str | None = None,
        aux_weight: float = TORCHVISION_AUX_WEIGHT,
    ) -> None:
        super().__init__()
        if (aux_classifier is None) != (aux_feature is None):
            raise ValueError("aux_classifier and aux_feature go together")
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.out_feature = out_feature
        self.aux_feature = aux_feature
        self.aux_weight = aux_weight if aux_classifier is not None else 0.0

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        result = {"out": resize_to(self.classifier(features[self.out_feature]), x)}
        if self.aux_classifier is not None:
            result["aux"] = resize_to(self.aux_classifier(features[self.aux_feature]), x)
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.classifier(self.backbone(x)[self.out_feature]), x)


def check_choice(model: str, what: str, value: object, valid: Sequence[object]) -> None:
    """Fail loudly, listing the valid values, if option ``what`` of ``model`` is not one of them."""
    if value not in valid:
        raise ValueError(
            f"{model} {what} {value!r} is not available; valid {what}s: {', '.join(map(str, valid))}"
        )
