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


def max_pool_switches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2, stride-2 max-pool and where each window's maximum was, for :func:`max_unpool`.

    In PyTorch, ``max_pool2d(return_indices=True)``'s flat int64 indices. When traced or
    exported to ONNX, "switches" instead: which of the window's four cells won (uint8, 0-3 in
    row-major order, the first on ties, as torch picks), from a max and an argmax over each
    window's four cells (no pool operator): OpenVINO runs ONNX's pool with indices in its
    reference kernel (SegNet-Basic at 360x480: 2.2 s, 1.9 of it in the pools, against 0.35 s
    with switches), while in eager PyTorch the switches cost 6-15% more than torch's kernels.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return max_pool_cells(x)
    return F.max_pool2d(x, 2, stride=2, return_indices=True)


def max_pool_cells(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2, stride-2 max-pool and its switches (uint8, see :func:`max_pool_switches`)."""
    n, c, h, w = x.shape
    cells = F.pixel_unshuffle(x[..., : h // 2 * 2, : w // 2 * 2], 2).view(n, c, 4, h // 2, w // 2)
    values, switches = cells.max(dim=2)  # the first maximal cell on ties
    return values, switches.to(torch.uint8)


def max_unpool(x: torch.Tensor, where: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """``nn.MaxUnpool2d(2, stride=2)`` for :func:`max_pool_switches`: each value back at its window's
    maximum in a ``size`` map (the pre-pool size, odd ones included), zeros elsewhere.

    Written without ``MaxUnpool2d``, whose ``output_size`` check uses Python branches that
    neither trace nor export with dynamic height and width: flat indices scatter into a zero
    map; switches select at the pooled size and interleave into the twice-larger map.
    """
    n, c, h2, w2 = x.shape
    if where.dtype == torch.int64:  # flat indices
        out = x.new_zeros(n, c, size[0], size[1]).flatten(2)
        return out.scatter(2, where.flatten(2), x.flatten(2)).view(n, c, size[0], size[1])
    if where.dtype != torch.uint8:
        raise TypeError(f"max_unpool takes int64 flat indices or uint8 switches from max_pool_switches, not {where.dtype}")
    # Scalar comparisons and fill: nothing device-bound for a trace to bake in.
    cells = torch.stack([torch.where(where == k, x, 0.0) for k in range(4)], dim=2)  # n, c, 4, h2, w2
    out = F.pixel_shuffle(cells.view(n, c * 4, h2, w2), 2)
    return F.pad(out, [0, size[-1] - 2 * w2, 0, size[-2] - 2 * h2])
