"""VGG16 and VGG16-BN feature extractors (the backbones of FCN and SegNet).

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015 — https://arxiv.org/abs/1409.1556

``features`` is one flat ``nn.Sequential`` indexed exactly like torchvision's (and
timm's, which copies it), so ImageNet weights load key for key. The forward returns
the output of each of the five max-pools (``pool1``..``pool5``, strides 2..32); FCN
uses pool3/4/5.

Two models need more than the pooled maps:

* FCN turns the classifier's fc6/fc7 into convolutions: :func:`vgg_fc_as_conv`
  reshapes them from a torchvision or timm state dict.
* SegNet pools remembering where the maxima were, to unpool later, so it runs each stage's
  convs with :meth:`VGG.forward_stage` and pools itself; :meth:`VGG.stage_bounds`
  gives the index ranges if it needs the modules.
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.backbones.base import Backbone, FeatureInfo

# torchvision's configuration "D": conv widths, "M" = 2x2 max-pool.
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(Backbone):
    """VGG16 convolutional trunk (no classifier); returns ``pool1``..``pool5``.

    ``in_channels`` is the number of image channels the first conv reads.
    """

    def __init__(self, *, batch_norm: bool, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self._bounds: list[tuple[int, int]] = []
        self._pool_names: dict[int, str] = {}
        self.feature_info = {}
        channels, start = in_channels, 0  # the width entering each layer
        for v in _VGG16_CFG:
            if v == "M":
                pool = len(layers)
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                self._bounds.append((start, pool))
                name = f"pool{len(self._bounds)}"
                self._pool_names[pool] = name
                self.feature_info[name] = FeatureInfo(channels, 2 ** len(self._bounds))
                start = pool + 1
                continue
            layers.append(nn.Conv2d(channels, int(v), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(v)))
            layers.append(nn.ReLU(inplace=True))
            channels = int(v)
        self.features = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an unloaded backbone trains like theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_bounds(self) -> list[tuple[int, int]]:
        """``(start, pool)`` per stage: ``features[start:pool]`` are its convs, ``features[pool]`` its max-pool."""
        return list(self._bounds)

    def forward_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Run the convs (with BN and ReLU) of stage ``stage`` (0..4), without its pool."""
        start, pool = self._bounds[stage]
        for i in range(start, pool):
            x = self.features[i](x)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._pool_names:
                out[self._pool_names[i]] = x
        return out


def vgg16(*, output_stride: int = 32, in_channels: int = 3) -> VGG:
    """VGG16 without BatchNorm (torchvision ``vgg16`` features, 14.7M parameters)."""
    _check_output_stride(output_stride)
    return VGG(batch_norm=False, in_channels=in_channels)


def vgg16_bn(*, output_stride: int = 32, in_channels: int = 3) -> VGG:
    """VGG16 with BatchNorm after every conv (torchvision ``vgg16_bn`` features); SegNet's encoder."""
    _check_output_stride(output_stride)
    return VGG(batch_norm=True, in_channels=in_channels)


def _check_output_stride(output_stride: int) -> None:
    # The builders take output_stride so every backbone builder has one signature;
    # VGG's classic models (FCN, SegNet) have no dilated variant.
    if output_stride != 32:
        raise ValueError(f"VGG supports only output_stride=32, got {output_stride!r}")


def vgg_fc_as_conv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fc6/fc7 of an ImageNet VGG as conv weights: ``{"fc6.weight": (4096, 512, 7, 7), ...}``.

    FCN keeps the classifier's first two layers as a 7x7 and a 1x1 conv so they slide
    over maps of any size. torchvision stores them as ``classifier.0``/``classifier.3``
    Linears whose 25088 inputs are a flattened (512, 7, 7) map, so a reshape is exact;
    timm already stores them as convs (``pre_logits.fc1``/``pre_logits.fc2``).
    Returns ``fc6.weight, fc6.bias, fc7.weight, fc7.bias``.
    """
    for fc6, fc7 in (("classifier.0", "classifier.3"), ("pre_logits.fc1", "pre_logits.fc2")):
        if f"{fc6}.weight" in state_dict:
            break
    else:
        raise ValueError(
            "no VGG fc6/fc7 weights found: expected torchvision's 'classifier.0.weight' "
            "or timm's 'pre_logits.fc1.weight'"
        )
    try:
        w6, b6 = state_dict[f"{fc6}.weight"], state_dict[f"{fc6}.bias"]
        w7, b7 = state_dict[f"{fc7}.weight"], state_dict[f"{fc7}.bias"]
    except KeyError as e:
        raise ValueError(f"incomplete VGG fc6/fc7 weights: missing {e.args[0]!r}") from None
    return {
        "fc6.weight": w6.reshape(w6.shape[0], 512, 7, 7),
        "fc6.bias": b6,
        "fc7.weight": w7.reshape(w7.shape[0], w7.shape[1], 1, 1),
        "fc7.bias": b7,
    }
