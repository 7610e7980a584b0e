"""ResNet-18/34/50/101 as a segmentation backbone.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 —
https://arxiv.org/abs/1512.03385

Module names mirror torchvision's ``ResNet`` exactly (``conv1, bn1, relu, maxpool,
layer1..layer4``; blocks ``conv1, bn1, conv2, bn2[, conv3, bn3], downsample.0/.1``),
so torchvision (and timm, which uses the same names) ImageNet weights load key for key
once ``fc.*`` is dropped. Bottleneck is torchvision's "v1.5": the stride sits on the
3x3 conv rather than the first 1x1, which is what the published weights were trained
with.

``output_stride`` 16 or 8 trades the stride of layer4 (and layer3) for dilation, as
torchvision's ``replace_stride_with_dilation`` does for DeepLab/PSPNet: the maps stay
larger while every conv keeps the receptive field it was pretrained with.
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.backbones.base import Backbone, FeatureInfo
from semseg.layers import he_init_

# For each output stride, whether layer2..layer4 replace their stride by dilation.
_DILATE_STAGES: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


def _conv3x3(in_planes: int, out_planes: int, *, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps 'same' size for a 3x3 kernel at any dilation.
    return nn.Conv2d(
        in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut: ResNet-18/34.

    ``first_dilation`` applies to ``conv1``, which carries the block's stride, and
    ``dilation`` to ``conv2``. In the first block of a dilated stage ``conv1`` keeps the
    previous stage's dilation (it is where the stride used to be) while ``conv2`` already
    runs on the finer grid, as in timm. torchvision itself refuses dilated BasicBlocks.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride=stride, dilation=first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut: ResNet-50/101 (torchvision v1.5).

    The only 3x3 conv carries the stride, so it takes ``first_dilation``, exactly as
    torchvision gives the first block of a dilated stage the previous dilation;
    ``dilation`` is accepted so both block types share one constructor signature.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
        first_dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride=stride, dilation=first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone):
    """ResNet trunk without the classifier; returns the stem and the four stage outputs.

    ``"stem"`` is taken after conv1/bn1/relu, before the max-pool (stride 2), for
    decoders that want a high-resolution skip. ``in_channels`` is the number of image channels ``conv1`` reads.
    """

    def __init__(
        self, block: type[BasicBlock | Bottleneck], layers: list[int], *, output_stride: int = 32, in_channels: int = 3
    ) -> None:
        super().__init__()
        if output_stride not in _DILATE_STAGES:
            raise ValueError(f"output_stride must be one of {sorted(_DILATE_STAGES)}, got {output_stride!r}")
        self._inplanes = 64
        self._dilation = 1
        self._stride = 4  # after conv1 (2) and maxpool (2)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = _DILATE_STAGES[output_stride]
        self.feature_info = {"stem": FeatureInfo(64, 2)}
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1, dilate=False, name="layer1")
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0], name="layer2")
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1], name="layer3")
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2], name="layer4")
        self._init_weights()

    def _make_layer(
        self,
        block: type[BasicBlock | Bottleneck],
        planes: int,
        blocks: int,
        *,
        stride: int,
        dilate: bool,
        name: str,
    ) -> nn.Sequential:
        # Mirrors torchvision's _make_layer: a dilated stage multiplies the dilation by
        # the stride it gives up, and its first block keeps the previous dilation.
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        self._stride *= stride
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        layers = [
            block(
                self._inplanes,
                planes,
                stride=stride,
                downsample=downsample,
                dilation=self._dilation,
                first_dilation=previous_dilation,
            )
        ]
        self._inplanes = out_planes
        for _ in range(1, blocks):
            layers.append(
                block(out_planes, planes, dilation=self._dilation, first_dilation=self._dilation)
            )
        self.feature_info[name] = FeatureInfo(out_planes, self._stride)
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an unloaded backbone trains like theirs.
        he_init_(self, zero_conv_bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        layer1 = self.layer1(self.maxpool(stem))
        layer2 = self.layer2(layer1)
        layer3 = self.layer3(layer2)
        layer4 = self.layer4(layer3)
        return {"stem": stem, "layer1": layer1, "layer2": layer2, "layer3": layer3, "layer4": layer4}


def resnet18(*, output_stride: int = 32, in_channels: int = 3) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); stage channels 64/128/256/512."""
    return ResNet(BasicBlock, [2, 2, 2, 2], output_stride=output_stride, in_channels=in_channels)


def resnet34(*, output_stride: int = 32, in_channels: int = 3) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); stage channels 64/128/256/512."""
    return ResNet(BasicBlock, [3, 4, 6, 3], output_stride=output_stride, in_channels=in_channels)


def resnet50(*, output_stride: int = 32, in_channels: int = 3) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); stage channels 256/512/1024/2048."""
    return ResNet(Bottleneck, [3, 4, 6, 3], output_stride=output_stride, in_channels=in_channels)


def resnet101(*, output_stride: int = 32, in_channels: int = 3) -> ResNet:
    """ResNet-101 (Bottleneck, [3, 4, 23, 3]); stage channels 256/512/1024/2048."""
    return ResNet(Bottleneck, [3, 4, 23, 3], output_stride=output_stride, in_channels=in_channels)
