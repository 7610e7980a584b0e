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
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.layers import ConvBNAct, pad_to
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


@register_model
def unet(
    *,
    num_classes: int,
    backbone: str = "none",
    base_channels: int = 64,
    depth: int = 4,
    batch_norm: bool = True,
) -> UNet:
    """U-Net. ``backbone="none"`` is the paper's encoder (64 -> 1024 channels at the defaults).

    ``base_channels`` and ``depth`` shrink or grow it (the demo uses 16 and 4).
    """
    if backbone != "none":
        raise ValueError(f"unet backbone {backbone!r} is not available; valid backbones: none")
    if base_channels < 1 or depth < 1:
        raise ValueError(f"unet needs base_channels >= 1 and depth >= 1, got {base_channels} and {depth}")
    encoder = UNetEncoder(3, base_channels, depth, batch_norm=batch_norm)
    return UNet(encoder, num_classes, batch_norm=batch_norm)
