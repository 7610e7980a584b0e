"""FCN: Fully Convolutional Networks for Semantic Segmentation.

Long, Shelhamer and Darrell, CVPR 2015 — https://arxiv.org/abs/1411.4038

Two models live here:

* ``fcn32s`` / ``fcn16s`` / ``fcn8s`` — the paper's skip architectures. VGG16's fc6/fc7
  become a 7x7 and a 1x1 convolution, a 1x1 "score" conv predicts classes at stride
  32, and learnable transposed convolutions initialised to bilinear interpolation
  bring the scores back up. FCN-16s adds scores from pool4 (stride 16) before the last
  up-sampling, FCN-8s also from pool3 (stride 8). On ResNet-50/101 the same skips come
  from layer4/layer3/layer2.
* ``fcn`` — torchvision's ``fcn_resnet50/101``: a dilated ResNet (output stride 8)
  with an :class:`~semseg.models.heads.FCNHead` and bilinear up-sampling; its
  checkpoints load with :func:`semseg.models.torchvision_compat.load_torchvision_segmentation`.

Padding and alignment. The paper pads conv1_1 by 100 pixels so that fc6, a *valid*
7x7 conv, still yields a map for small images, and then crops every fused score map at
an offset worked out from the receptive fields. We give fc6 padding 3 instead ('same'),
so each map at stride ``s`` has ``floor(H / s)`` cells (VGG) and any input of at least
32 pixels gives pool5 of at least 1x1. Cell ``i`` of such a map is centred on input
pixel ``i*s + (s-1)/2``; a transposed conv with kernel ``2s``, stride ``s`` and padding
``s/2`` puts the bilinear kernel's centre exactly there, so no crop offsets are needed.
What is left — the up to ``s - 1`` rows/columns that floor-pooling dropped (or the
extra ones of ResNet's ceil-sized maps) — is fixed by :func:`fit_to`, which crops and
edge-pads by shape-derived amounts: no data-dependent branch, so it traces and exports.
The price of 'same' fc6 is that its border windows see zeros, which ImageNet's fc6
never did; the price of pad-100 is computing fc6 on a much larger map. (ResNet maps
centre cell ``i`` on pixel ``i*s`` rather than ``i*s + (s-1)/2``, so on ResNets the scores
sit up to half a stride off, the approximation torchvision's bilinear resizing makes too.)
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from semseg.backbones import Backbone, create_backbone, read_state_dict, vgg_fc_as_conv
from semseg.models.base import SegmentationModel
from semseg.models.heads import FCNHead, SimpleSegmentationModel, check_choice
from semseg.registry import register_model

SkipBackbone = Literal["vgg16", "resnet50", "resnet101"]
DilatedBackbone = Literal["resnet50", "resnet101"]

# Feature maps at strides (8, 16, 32) that the skip architectures score.
_TAPS = {"vgg16": ("pool3", "pool4", "pool5")}
_RESNET_TAPS = ("layer2", "layer3", "layer4")


def bilinear_kernel(
    size: int, *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """The ``size x size`` bilinear interpolation kernel (the FCN authors' ``upsample_filt``).

    For ``size = 2s`` it is the tent ``(1 - |d| / s)`` in each axis, centred between the
    two middle taps, i.e. what a stride-``s`` transposed conv needs to interpolate.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=dtype, device=device)
    tent = 1 - (og - center).abs() / factor
    return tent[:, None] * tent[None, :]


class BilinearUpsample(nn.ConvTranspose2d):
    """Learnable per-class up-sampling by ``factor``, initialised to bilinear interpolation.

    Output size is exactly ``factor`` x the input size, aligned as described in the module
    docstring. The paper's deconvolution mixes all classes (C x C kernels initialised
    diagonally); making it per-class (``groups = C``) gives the same initial function and
    C times fewer weights, which matters for FCN-32s's 64x64 kernel: with 150 classes the
    full version would hold 92M parameters.
    """

    def __init__(self, channels: int, factor: int) -> None:
        if factor < 2 or factor % 2:
            raise ValueError(f"factor must be an even integer >= 2, got {factor}")
        super().__init__(
            channels, channels, 2 * factor, stride=factor, padding=factor // 2, groups=channels, bias=False
        )
        with torch.no_grad():
            kernel = bilinear_kernel(2 * factor, dtype=self.weight.dtype, device=self.weight.device)
            self.weight.copy_(kernel.expand_as(self.weight))


def fit_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Crop ``x`` on the bottom/right to at most ``ref``'s size, then edge-pad it up to that size.

    Both amounts come from shapes (crop by slicing, pad by ``ref - x``, possibly 0), so
    the graph has no data-dependent branch. Edge padding repeats the last row/column of
    scores into pixels the pooled maps never covered, rather than leaving them at zero.
    """
    x = x[:, :, : ref.shape[-2], : ref.shape[-1]]
    return F.pad(x, [0, ref.shape[-1] - x.shape[-1], 0, ref.shape[-2] - x.shape[-2]], mode="replicate")


class ConvolutionalFC(nn.Module):
    """VGG16's fc6 (7x7 conv, 4096) and fc7 (1x1 conv, 4096), each with ReLU and Dropout(0.5).

    Named ``fc6``/``fc7`` so :func:`~semseg.backbones.vgg_fc_as_conv` output loads directly.
    """

    def __init__(self, in_channels: int = 512, channels: int = 4096) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 7, padding=3)  # 'same': see the module docstring
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        for conv in (self.fc6, self.fc7):
            # torchvision's VGG classifier initialisation.
            nn.init.normal_(conv.weight, 0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.relu(self.fc6(x)))
        return self.drop(self.relu(self.fc7(x)))


class FCN(SegmentationModel):
    """FCN-32s/16s/8s: score the deepest map, then fuse scores of shallower maps on the way up.

    ``taps`` names the backbone maps at strides 8, 16 and 32; ``stride`` (32, 16 or 8)
    is the coarsest stride whose scores reach the final up-sampling. In the paper's names:
    ``score_skips`` holds score_pool4 (then score_pool3), ``upscore_skips`` the 2x
    upscore2 (then upscore_pool4), and ``upscore`` is upscore / upscore16 / upscore8.
    """

    def __init__(
        self,
        backbone: Backbone,
        fc: nn.Module,
        fc_channels: int,
        num_classes: int,
        *,
        taps: tuple[str, str, str],
        stride: int,
    ) -> None:
        super().__init__()
        check_choice("FCN", "stride", stride, (32, 16, 8))
        self.backbone = backbone
        self.fc = fc
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        # Skips from stride 16, then 8, as many as the variant uses.
        self.skip_taps = [taps[1], taps[0]][: {32: 0, 16: 1, 8: 2}[stride]]
        self.deep_tap = taps[2]
        self.score_skips = nn.ModuleList(
            nn.Conv2d(backbone.feature_info[tap].channels, num_classes, 1) for tap in self.skip_taps
        )
        for score in self.score_skips:
            # The paper zero-initialises the skip scores so that training starts from the
            # coarser net's function.
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.upscore_skips = nn.ModuleList(BilinearUpsample(num_classes, 2) for _ in self.skip_taps)
        self.upscore = BilinearUpsample(num_classes, stride)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        score = self.score_fr(self.fc(features[self.deep_tap]))
        for tap, score_skip, up in zip(self.skip_taps, self.score_skips, self.upscore_skips):
            skip = score_skip(features[tap])
            score = fit_to(up(score), skip) + skip
        return {"out": fit_to(self.upscore(score), x)}


def _skip_fcn(
    name: str, stride: int, *, num_classes: int, backbone: str, backbone_weights: str | None, in_channels: int
) -> FCN:
    check_choice(name, "backbone", backbone, get_args(SkipBackbone))
    trunk = create_backbone(backbone, weights=backbone_weights, in_channels=in_channels)
    if backbone == "vgg16":
        fc: nn.Module = ConvolutionalFC(trunk.feature_info["pool5"].channels)
        fc_channels = 4096
        if backbone_weights is not None:
            fc.load_state_dict(vgg_fc_as_conv(read_state_dict(backbone_weights)))
    else:  # ResNet: layer4 is scored directly, as torchvision's FCN heads do
        fc = nn.Identity()
        fc_channels = trunk.feature_info["layer4"].channels
    taps = _TAPS.get(backbone, _RESNET_TAPS)
    return FCN(trunk, fc, fc_channels, num_classes, taps=taps, stride=stride)


@register_model
def fcn32s(
    *, num_classes: int, backbone: SkipBackbone = "vgg16", backbone_weights: str | None = None, in_channels: int = 3
) -> FCN:
    """FCN-32s: stride-32 scores up-sampled 32x in one step.

    ``backbone_weights``: a local ImageNet file (torchvision or timm naming); for VGG16
    its fc6/fc7 are reshaped into the convolutional fc6/fc7.
    """
    return _skip_fcn("fcn32s", 32, num_classes=num_classes, backbone=backbone, backbone_weights=backbone_weights,
                     in_channels=in_channels)


@register_model
def fcn16s(
    *, num_classes: int, backbone: SkipBackbone = "vgg16", backbone_weights: str | None = None, in_channels: int = 3
) -> FCN:
    """FCN-16s: FCN-32s plus pool4 (layer3) scores, up-sampled 16x."""
    return _skip_fcn("fcn16s", 16, num_classes=num_classes, backbone=backbone, backbone_weights=backbone_weights,
                     in_channels=in_channels)


@register_model
def fcn8s(
    *, num_classes: int, backbone: SkipBackbone = "vgg16", backbone_weights: str | None = None, in_channels: int = 3
) -> FCN:
    """FCN-8s: FCN-16s plus pool3 (layer2) scores, up-sampled 8x; the paper's best (134M parameters on VGG16)."""
    return _skip_fcn("fcn8s", 8, num_classes=num_classes, backbone=backbone, backbone_weights=backbone_weights,
                     in_channels=in_channels)


class DilatedFCN(SimpleSegmentationModel):
    """torchvision's FCN: dilated ResNet (stride 8) -> FCNHead -> bilinear to input; aux FCNHead on layer3."""


@register_model
def fcn(
    *,
    num_classes: int,
    backbone: DilatedBackbone = "resnet50",
    backbone_weights: str | None = None,
    aux: bool = False,
    in_channels: int = 3,
) -> DilatedFCN:
    """torchvision's ``fcn_resnet50``/``fcn_resnet101`` (their checkpoints load, aux head or not).

    ``aux=True`` adds the layer3 auxiliary head (loss weight 0.5, torchvision's recipe).
    """
    check_choice("fcn", "backbone", backbone, get_args(DilatedBackbone))
    trunk = create_backbone(backbone, output_stride=8, weights=backbone_weights, in_channels=in_channels)
    head = FCNHead(trunk.feature_info["layer4"].channels, num_classes)
    aux_head = FCNHead(trunk.feature_info["layer3"].channels, num_classes) if aux else None
    return DilatedFCN(trunk, head, aux_head, out_feature="layer4", aux_feature="layer3" if aux else None)
