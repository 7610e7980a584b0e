"""BiSeNet V2: a bilateral network with guided aggregation for real-time segmentation.

Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for Real-time Semantic
Segmentation", IJCV 2021 — https://arxiv.org/abs/2004.02147.

Two branches read the image side by side. The *Detail Branch* is wide and shallow: three
stages of plain 3x3 conv-BN-ReLU (64, 64, 128 channels) down to 1/8, keeping spatial
detail. The *Semantic Branch* is narrow and deep: a Stem Block (a strided conv, then a
conv path and a max-pool path concatenated and fused) to 1/4 with 16 channels,
Gather-and-Expansion (GE) layers — an inverted bottleneck with depthwise 3x3 convs,
expansion 6 — to 1/8, 1/16 and 1/32 (32, 64, 128 channels), and a Context Embedding
block (global average pool, BN, 1x1 conv, added back to the map, 3x3 conv). The
*Bilateral Guided Aggregation* layer fuses them: the semantic map, through a sigmoid,
gates the detail map at 1/8 (semantic up-sampled) and at 1/32 (detail strided and
pooled); the two results are summed and convolved at 1/8. A segmentation head (3x3 conv
to 1024 channels, 1x1 classifier) classifies at 1/8.

Module order and layer choices follow the reference implementations the paper's numbers
were reproduced with (CoinCheung/BiSeNet, MMSegmentation's ``BiSeNetV2``); 3.4M
parameters for 19 classes without booster heads, the size usually quoted for the paper.

Booster training. The paper attaches a *booster* head (the segmentation head again) to
each semantic-branch stage -- S2 (the stem's 16-channel 1/4 map), S3, S4 and S5_4 (the last
GE layer's 128-channel 1/32 map, before the Context Embedding block) -- and adds their
losses, each with weight 1, to the main loss. ``aux=True`` builds all four, with
MMSegmentation's hidden widths (16, 64, 256, 1024 channels), as ``forward_train``'s
``"aux"`` (S5_4) and ``"aux_s2"``, ``"aux_s3"``, ``"aux_s4"`` outputs, weighted in
``aux_weights``; ``aux_boosters="s5"`` keeps only the S5_4 booster (semseg's BiSeNet V2
before the four were built).
"""

from __future__ import annotations

import torch
from torch import nn

from semseg.layers import ConvBNAct, he_init_, resize_to
from semseg.models.base import SegmentationModel
from semseg.registry import register_model

# The paper (Sec. 4.2): the booster losses are added to the main loss with weight 1.
BISENETV2_AUX_WEIGHT = 1.0
# GE layers expand their input channels six-fold (the paper's ablation picks 6).
EXPANSION = 6


def _dwconv_bn(channels: int, out_channels: int | None = None, stride: int = 1) -> list[nn.Module]:
    """Depthwise 3x3 conv (``out_channels`` a multiple of ``channels``) -> BN."""
    out_channels = out_channels or channels
    conv = nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1, groups=channels, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


class DetailBranch(nn.Sequential):
    """Three stages of 3x3 conv-BN-ReLU, each starting strided: 64, 64, 128 channels, stride 8."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(
            ConvBNAct(in_channels, 64, stride=2), ConvBNAct(64, 64),
            ConvBNAct(64, 64, stride=2), ConvBNAct(64, 64), ConvBNAct(64, 64),
            ConvBNAct(64, 128, stride=2), ConvBNAct(128, 128), ConvBNAct(128, 128),
        )  # fmt: skip


class StemBlock(nn.Module):
    """Strided 3x3 conv to 16 channels, then a conv path (1x1 to 8, strided 3x3) beside a max-pool; fused to 1/4.

    Both paths halve with 'same' padding, so they agree on every input size (ceil(H/4)).
    """

    def __init__(self, out_channels: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, stride=2)
        self.left = nn.Sequential(ConvBNAct(out_channels, out_channels // 2, 1),
                                  ConvBNAct(out_channels // 2, out_channels, stride=2))  # fmt: skip
        self.right = nn.MaxPool2d(3, stride=2, padding=1)
        self.fuse = ConvBNAct(out_channels * 2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], 1))


class GELayer(nn.Module):
    """Gather-and-Expansion layer: 3x3 conv, depthwise expansion x6, 1x1 projection, residual, ReLU.

    With ``stride=2`` the expansion is a strided depthwise conv followed by a second
    depthwise conv, and the shortcut is a strided depthwise 3x3 + 1x1 projection (the
    paper's Fig. 5c); otherwise the shortcut is the identity (Fig. 5b).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        mid = in_channels * EXPANSION
        self.conv1 = ConvBNAct(in_channels, in_channels)
        if stride == 1:
            self.dwconv = nn.Sequential(*_dwconv_bn(in_channels, mid), nn.ReLU(inplace=True))
            self.shortcut = nn.Identity()
        else:
            self.dwconv = nn.Sequential(*_dwconv_bn(in_channels, mid, stride=2),  # no ReLU between (as the paper)
                                        *_dwconv_bn(mid), nn.ReLU(inplace=True))  # fmt: skip
            self.shortcut = nn.Sequential(*_dwconv_bn(in_channels, stride=2),
                                          nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))  # fmt: skip
        self.conv2 = nn.Sequential(nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.dwconv(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pool -> BN -> 1x1 conv-BN-ReLU, added back to the map, then a 3x3 conv-BN-ReLU."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_gap = ConvBNAct(channels, channels, 1)
        self.conv_last = ConvBNAct(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.conv_gap(self.bn(x.mean(dim=(2, 3), keepdim=True)))
        return self.conv_last(x + context)


class SemanticBranch(nn.Module):
    """Stem (1/4, 16 ch) -> GE stages 3, 4, 5 (1/8, 1/16, 1/32; 32, 64, 128 ch) -> Context Embedding."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = StemBlock(16, in_channels)
        self.stage3 = nn.Sequential(GELayer(16, 32, stride=2), GELayer(32, 32))
        self.stage4 = nn.Sequential(GELayer(32, 64, stride=2), GELayer(64, 64))
        self.stage5 = nn.Sequential(GELayer(64, 128, stride=2), GELayer(128, 128), GELayer(128, 128),
                                    GELayer(128, 128))  # fmt: skip
        self.ce = ContextEmbedding(128)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The branch's output and stage 5's map (the S5_4 booster's input)."""
        semantic, stages = self.forward_stages(x)
        return semantic, stages["s5"]

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The branch's output and every stage's map, ``"s2"`` (the stem's) to ``"s5"``: the boosters' inputs."""
        s2 = self.stem(x)
        s3 = self.stage3(s2)
        s4 = self.stage4(s3)
        s5 = self.stage5(s4)
        return self.ce(s5), {"s2": s2, "s3": s3, "s4": s4, "s5": s5}


class BilateralGuidedAggregation(nn.Module):
    """The semantic map gates the detail map at both resolutions; the sum is convolved at 1/8.

    detail (1/8) x sigmoid(up-sampled semantic) + up-sampled(strided detail (1/32) x
    sigmoid(semantic)), as the paper's Fig. 6 and the reference code. The detail map's
    strided conv + 3x3 average pool lands on ceil(H/32), the semantic branch's size, for any
    input; the up-samplings go back to the detail map's size (bilinear, as MMSegmentation).
    """

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.detail_keep = nn.Sequential(*_dwconv_bn(channels), nn.Conv2d(channels, channels, 1, bias=False))
        self.detail_down = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.AvgPool2d(3, stride=2, padding=1),
        )  # fmt: skip
        self.semantic_up = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                         nn.BatchNorm2d(channels))  # fmt: skip
        self.semantic_keep = nn.Sequential(*_dwconv_bn(channels), nn.Conv2d(channels, channels, 1, bias=False))
        self.conv = ConvBNAct(channels, channels)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        high = self.detail_keep(detail) * torch.sigmoid(resize_to(self.semantic_up(semantic), detail))
        low = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.conv(high + resize_to(low, detail))


class SegmentHead(nn.Sequential):
    """The paper's segmentation head (Fig. 6): 3x3 conv-BN-ReLU to ``hidden`` channels, dropout, 1x1 classifier."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__(ConvBNAct(in_channels, hidden), nn.Dropout(dropout), nn.Conv2d(hidden, num_classes, 1))


class BiSeNetV2(SegmentationModel):
    """Detail branch (1/8) + semantic branch (1/32) -> guided aggregation -> head at 1/8; boosters on S2-S5_4."""

    def __init__(self, num_classes: int, *, aux: bool, in_channels: int = 3, aux_boosters: str = "all") -> None:
        super().__init__()
        if aux_boosters not in ("all", "s5"):
            raise ValueError(f"aux_boosters must be 'all' (S2-S5_4, as the paper) or 's5', got {aux_boosters!r}")
        self.detail = DetailBranch(in_channels)
        self.semantic = SemanticBranch(in_channels)
        self.bga = BilateralGuidedAggregation(128)
        self.head = SegmentHead(128, 1024, num_classes)
        self.booster = SegmentHead(128, 1024, num_classes) if aux else None
        self.aux_weight = BISENETV2_AUX_WEIGHT if aux else 0.0
        self._init_weights()
        # Built and initialised after the rest, whose initial weights then do not depend on whether they exist.
        shallow = aux and aux_boosters == "all"
        self.boosters = nn.ModuleDict({f"s{stage}": SegmentHead(channels, hidden, num_classes)
                                       for stage, channels, hidden in ((2, 16, 16), (3, 32, 64), (4, 64, 256))}
                                      if shallow else {})  # fmt: skip
        he_init_(self.boosters, zero_conv_bias=True)

    @property
    def aux_weights(self) -> dict[str, float]:
        """The S5_4 booster as ``"aux"`` and the S2-S4 boosters as ``"aux_s2"`` ..., each with the paper's weight 1."""
        if self.booster is None:
            return {}
        return {"aux": BISENETV2_AUX_WEIGHT, **{f"aux_{name}": BISENETV2_AUX_WEIGHT for name in self.boosters}}

    def _init_weights(self) -> None:
        # He (fan_out) for convs, BN to identity, as CoinCheung's code. Unlike it we do not
        # zero-init the GE layers' last BN scale: that starts every GE block as the identity,
        # but leaves its 1x1 projection without gradient on the first step.
        he_init_(self, zero_conv_bias=True)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        semantic, stages = self.semantic.forward_stages(x)
        outputs = {"out": resize_to(self.head(self.bga(self.detail(x), semantic)), x)}
        if self.booster is not None:
            outputs["aux"] = resize_to(self.booster(stages["s5"]), x)
        for name, booster in self.boosters.items():
            outputs[f"aux_{name}"] = resize_to(booster(stages[name]), x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        semantic, _ = self.semantic(x)
        return resize_to(self.head(self.bga(self.detail(x), semantic)), x)


@register_model
def bisenetv2(*, num_classes: int, aux: bool = True, in_channels: int = 3, aux_boosters: str = "all") -> BiSeNetV2:
    """BiSeNet V2 with its booster heads for training (``aux``: S2-S5_4, or only S5_4 with ``aux_boosters="s5"``);
    3.4M parameters without them (19 classes)."""
    return BiSeNetV2(num_classes, aux=aux, in_channels=in_channels, aux_boosters=aux_boosters)
