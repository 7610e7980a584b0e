"""U-Net: Convolutional Networks for Biomedical Image Segmentation.

Ronneberger, Fischer and Brox, MICCAI 2015 — https://arxiv.org/abs/1505.04597

A contracting path of double 3x3 convs and 2x2 max-pools doubles the channels at
each step (64 -> 1024); the expanding path up-samples with 2x2 transposed convs,
concatenates the encoder features of the same resolution (the skip connections that
recover localisation) and applies double 3x3 convs again. The paper used unpadded
convs and cropped the skips; we use 'same' padding (as practically every reimplementation
does) so the output matches the input size. The paper had no BatchNorm; it is on by
default here because it makes training far less sensitive to the learning rate, and
``batch_norm=False`` gives the paper's layers.

``backbone="resnet18"/"resnet34"/"resnet50"`` swaps the contracting path for a ResNet
(the encoder of segmentation_models.pytorch's popular U-Net variants): its stem and
layer1..layer3 (strides 2..16) are the skips, layer4 (stride 32) the bottom. The
decoder then up-samples bilinearly to each skip's exact size (ResNet maps are
``ceil(H / s)``, so a transposed conv could overshoot) and narrows to 256, 128, 64, 32
channels; a last DoubleConv at the input resolution (16 channels) precedes the classifier.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from semseg.backbones import ResNet, load_backbone_weights, resnet18, resnet34, resnet50
from semseg.layers import ConvBNAct, pad_to, resize_to
from semseg.models.base import SegmentationModel
from semseg.registry import register_model


class DoubleConv(nn.Sequential):
    """Two 3x3 conv (+BN) + ReLU layers: the unit of both U-Net paths."""

    def __init__(self, in_channels: int, out_channels: int, *, batch_norm: bool) -> None:
        super().__init__(
            ConvBNAct(in_channels, out_channels, 3, batch_norm=batch_norm),
            ConvBNAct(out_channels, out_channels, 3, batch_norm=batch_norm),
        )


class UpBlock(nn.Module):
    """Transposed-conv up-step, skip concatenation, then a DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, batch_norm: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels // 2 + skip_channels, out_channels, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # With odd sizes the pooled map was floored, so the up-sampled map can be a
        # pixel short of the skip: pad it rather than crop the skip.
        x = pad_to(self.up(x), skip)
        return self.conv(torch.cat([skip, x], dim=1))


class UNetEncoder(nn.Module):
    """The original contracting path; returns the feature map of every resolution."""

    def __init__(self, in_channels: int, base_channels: int, depth: int, *, batch_norm: bool) -> None:
        super().__init__()
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.channels = chans
        self.stem = DoubleConv(in_channels, chans[0], batch_norm=batch_norm)
        self.pool = nn.MaxPool2d(2)
        self.downs = nn.ModuleList(
            DoubleConv(chans[i], chans[i + 1], batch_norm=batch_norm) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for down in self.downs:
            feats.append(down(self.pool(feats[-1])))
        return feats


class UNet(SegmentationModel):
    """Encoder features feed the decoder at every resolution; a 1x1 conv gives the logits."""

    def __init__(self, encoder: UNetEncoder, num_classes: int, *, batch_norm: bool) -> None:
        super().__init__()
        self.encoder = encoder
        chans = encoder.channels
        self.ups = nn.ModuleList(
            UpBlock(chans[i + 1], chans[i], chans[i], batch_norm=batch_norm)
            for i in reversed(range(len(chans) - 1))
        )
        self.classifier = nn.Conv2d(chans[0], num_classes, kernel_size=1)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(x)
        y = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            y = up(y, skip)
        return {"out": self.classifier(y)}


UNetBackbone = Literal["none", "resnet18", "resnet34", "resnet50"]
RESNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)
_RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


class ResizeUpBlock(nn.Module):
    """Bilinear up-sampling to the skip's size, skip concatenation, then a DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, batch_norm: bool) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, resize_to(x, skip)], dim=1))


class ResNetUNet(SegmentationModel):
    """U-Net whose contracting path is a ResNet; ``decoder_channels`` are the widths after each up-step.

    With five widths, four up-steps consume the skips (layer3, layer2, layer1, stem) and
    the fifth DoubleConv runs at the input resolution.
    """

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        *,
        decoder_channels: tuple[int, ...] = RESNET_DECODER_CHANNELS,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        names = list(backbone.feature_info)  # shallow to deep: stem, layer1, ..., layer4
        self.bottom = names[-1]
        self.skips = names[-2::-1]
        if len(decoder_channels) != len(self.skips) + 1:
            raise ValueError(f"need {len(self.skips) + 1} decoder widths, got {decoder_channels}")
        in_channels = backbone.feature_info[self.bottom].channels
        ups = []
        for skip, out_channels in zip(self.skips, decoder_channels):
            skip_channels = backbone.feature_info[skip].channels
            ups.append(ResizeUpBlock(in_channels, skip_channels, out_channels, batch_norm=batch_norm))
            in_channels = out_channels
        self.ups = nn.ModuleList(ups)
        self.final = DoubleConv(in_channels, decoder_channels[-1], batch_norm=batch_norm)
        self.classifier = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        y = feats[self.bottom]
        for up, skip in zip(self.ups, self.skips):
            y = up(y, feats[skip])
        return {"out": self.classifier(self.final(resize_to(y, x)))}


@register_model
def unet(
    *,
    num_classes: int,
    backbone: UNetBackbone = "none",
    base_channels: int = 64,
    depth: int = 4,
    batch_norm: bool = True,
    backbone_weights: str | None = None,
    in_channels: int = 3,
) -> UNet | ResNetUNet:
    """U-Net. ``backbone="none"`` is the paper's encoder (64 -> 1024 channels at the defaults).

    ``base_channels`` and ``depth`` shrink or grow it (the demo uses 8 and 4); they
    shape only that encoder. ``"resnet18"``, ``"resnet34"`` and ``"resnet50"`` use a
    ResNet encoder instead (see the module docstring); ``backbone_weights`` is a local
    ImageNet weights file (torchvision or timm naming) for that ResNet.
    """
    valid = get_args(UNetBackbone)
    if backbone not in valid:
        raise ValueError(f"unet backbone {backbone!r} is not available; valid backbones: {', '.join(valid)}")
    if backbone != "none":
        if (base_channels, depth) != (64, 4):
            raise ValueError("unet base_channels and depth shape the original encoder only (backbone='none')")
        trunk = _RESNETS[backbone](in_channels=in_channels)
        if backbone_weights is not None:
            load_backbone_weights(trunk, backbone_weights)
        return ResNetUNet(trunk, num_classes, batch_norm=batch_norm)
    if backbone_weights is not None:
        raise ValueError("unet backbone_weights needs a ResNet backbone; the original encoder has no ImageNet weights")
    if base_channels < 1 or depth < 1:
        raise ValueError(f"unet needs base_channels >= 1 and depth >= 1, got {base_channels} and {depth}")
    encoder = UNetEncoder(in_channels, base_channels, depth, batch_norm=batch_norm)
    return UNet(encoder, num_classes, batch_norm=batch_norm)
