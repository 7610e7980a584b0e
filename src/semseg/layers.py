"""Small building blocks shared by backbones and heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d (optional) -> activation (optional).

    The conv has no bias when followed by BatchNorm: BN's shift makes it redundant.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        batch_norm: bool = True,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=not batch_norm,
            )
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish) else act())
        super().__init__(*layers)


def he_init_(module: nn.Module, *, zero_conv_bias: bool) -> None:
    """torchvision's initialisation: He normal (fan_out) for convs, BatchNorm to identity.

    ``zero_conv_bias`` also zeroes conv biases (torchvision's MobileNet does; its ResNet has
    none to zero, and DDRNet's authors leave PyTorch's default on theirs).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if zero_conv_bias and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``ref`` (align_corners=False).

    Taking the size from a tensor rather than Python ints keeps the graph exportable
    with dynamic height and width.
    """
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def pad_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` on the bottom/right so it matches ``ref``'s spatial size.

    Used where an up-sampling step lands one pixel short of its skip connection
    (odd input sizes): padding by a shape-derived amount, possibly 0, needs no
    data-dependent branch and so traces and exports.
    """
    dh = ref.shape[-2] - x.shape[-2]
    dw = ref.shape[-1] - x.shape[-1]
    return F.pad(x, [0, dw, 0, dh])


def max_unpool(x: torch.Tensor, indices: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """``nn.MaxUnpool2d`` for a non-overlapping max-pool: each value back at its argmax in a ``size`` map, zeros elsewhere.

    Written as one scatter into a zero map of the pre-pool size, because ``MaxUnpool2d``
    with ``output_size`` checks the size with Python branches that neither trace nor
    export to ONNX with dynamic height and width. ``indices`` are those of
    ``max_pool2d(..., return_indices=True)``: flat positions in the pre-pool plane.
    """
    n, c = x.shape[:2]
    out = x.new_zeros(n, c, size[0], size[1]).flatten(2)
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, size[0], size[1])
