"""SegFormer: a hierarchical Transformer encoder (Mix Transformer) and an all-MLP decoder.

Xie, Wang, Yu, Anandkumar, Alvarez and Luo, "SegFormer: Simple and Efficient Design for
Semantic Segmentation with Transformers", NeurIPS 2021 — https://arxiv.org/abs/2105.15203

The encoder has four stages at strides 4, 8, 16 and 32. Each starts with an *overlapping*
patch embedding (a strided conv: 7x7 stride 4 padding 3, then 3x3 stride 2 padding 1) and
a LayerNorm, then stacks Transformer blocks of

* efficient self-attention: keys and values come from the map shrunk by a strided conv of
  kernel = stride = the stage's reduction ratio (8, 4, 2, 1; the paper's sequence
  reductions 64, 16, 4, 1) plus a LayerNorm, which divides attention's cost by R^2;
* Mix-FFN: Linear -> 3x3 depthwise conv -> GELU -> Linear; the zero-padded conv leaks
  position into the features, so no positional encoding is needed and any input size works;

pre-norm residuals with stochastic depth (rate rising linearly to 0.1 over the blocks), and
a final LayerNorm per stage. The decoder projects each stage to C channels with a Linear,
up-samples them to stride 4, concatenates them (deepest first), fuses them with a 1x1 conv
+ BN + ReLU, and classifies after Dropout(0.1); the logits are up-sampled to the input.

The variants ``mit_b0`` ... ``mit_b5`` are those of the authors' code (NVlabs/SegFormer):
their FFN expansion is 4 in every stage, where the paper's Table 6 lists 8, 8, 4, 4; the
code's value is the one behind the paper's parameter counts and every released checkpoint.

Module names are those of Hugging Face ``transformers`` (>= 5) ``SegformerModel`` /
``SegformerForSemanticSegmentation`` (``stages.{i}.blocks.{j}.attention.q_proj``, ...), with
``encoder`` for their ``segformer``, so their checkpoints load by a small rename table
(:mod:`semseg.models.transformers_compat`). For the same reason every LayerNorm uses
PyTorch's eps (1e-5), as transformers does; the authors' code uses 1e-6 in the blocks' and
stages' norms, a difference far below the weights' own precision.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from semseg.backbones import Backbone, FeatureInfo
from semseg.layers import resize_to
from semseg.models.base import SegmentationModel
from semseg.models.heads import check_choice
from semseg.registry import register_model

MiTVariant = Literal["mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5"]


class MiTConfig(NamedTuple):
    """Channels and depth of each encoder stage, and the decoder's width."""

    hidden_sizes: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    decoder_channels: int


MIT_CONFIGS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "mit_b1": MiTConfig((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "mit_b2": MiTConfig((64, 128, 320, 512), (3, 4, 6, 3), 768),
    "mit_b3": MiTConfig((64, 128, 320, 512), (3, 4, 18, 3), 768),
    "mit_b4": MiTConfig((64, 128, 320, 512), (3, 8, 27, 3), 768),
    "mit_b5": MiTConfig((64, 128, 320, 512), (3, 6, 40, 3), 768),
}
# Shared by every variant (the paper's Table 6; the FFN expansion is the code's, see above).
NUM_HEADS = (1, 2, 5, 8)
REDUCTION_RATIOS = (8, 4, 2, 1)
PATCH_SIZES = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
MLP_RATIO = 4


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's residual branch with probability ``p`` (rescaling the rest)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class OverlapPatchEmbeddings(nn.Module):
    """Strided conv with ``kernel // 2`` padding (patches overlap) -> LayerNorm; NCHW in, NHWC out."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=stride, padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.proj(x).permute(0, 2, 3, 1))


class SequenceReduction(nn.Module):
    """Keys' and values' source: the NHWC map shrunk R x R by a conv of kernel = stride = R, as tokens, normed."""

    def __init__(self, hidden_size: int, ratio: int) -> None:
        super().__init__()
        self.sequence_reduction = nn.Conv2d(hidden_size, hidden_size, ratio, stride=ratio)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.sequence_reduction(x.permute(0, 3, 1, 2))
        return self.layer_norm(reduced.flatten(2).transpose(1, 2))


class EfficientSelfAttention(nn.Module):
    """Multi-head attention of every position over the R x R-reduced map (queries keep full resolution)."""

    def __init__(self, hidden_size: int, num_heads: int, reduction_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        self.sequence_reduction = SequenceReduction(hidden_size, reduction_ratio) if reduction_ratio > 1 else None

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, H, W, C)``; the result has the same shape."""
        tokens = x.flatten(1, 2)
        context = tokens if self.sequence_reduction is None else self.sequence_reduction(x)
        q = self._heads(self.q_proj(tokens))
        k, v = self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.o_proj(out.transpose(1, 2).flatten(2)).view_as(x)


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv on an NHWC map (Mix-FFN's source of positional information)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear."""

    def __init__(self, hidden_size: int, expanded: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, expanded)
        self.dwconv = DepthwiseConv(expanded)
        self.fc2 = nn.Linear(expanded, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x))))


class MiTBlock(nn.Module):
    """Pre-norm Transformer block: ``x + drop(attn(norm(x)))``, then ``x + drop(ffn(norm(x)))``; NHWC."""

    def __init__(self, hidden_size: int, num_heads: int, reduction_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(hidden_size)
        self.attention = EfficientSelfAttention(hidden_size, num_heads, reduction_ratio)
        self.layernorm_after = nn.LayerNorm(hidden_size)
        self.mlp = MixFFN(hidden_size, hidden_size * MLP_RATIO)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.layernorm_before(x)))
        return x + self.drop_path(self.mlp(self.layernorm_after(x)))


class MiTStage(nn.Module):
    """Overlapping patch embedding -> blocks -> LayerNorm; NCHW in and out."""

    def __init__(self, index: int, in_channels: int, hidden_size: int, drop_paths: list[float]) -> None:
        super().__init__()
        self.patch_embeddings = OverlapPatchEmbeddings(in_channels, hidden_size, PATCH_SIZES[index],
                                                       PATCH_STRIDES[index])  # fmt: skip
        self.blocks = nn.ModuleList(
            MiTBlock(hidden_size, NUM_HEADS[index], REDUCTION_RATIOS[index], p) for p in drop_paths
        )
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(x)
        for block in self.blocks:
            x = block(x)
        return self.layer_norm(x).permute(0, 3, 1, 2)


class MixTransformer(Backbone):
    """MiT encoder: four stages at strides 4/8/16/32, returned as ``stage1`` .. ``stage4`` (NCHW).

    ``in_channels`` is the number of image channels the first patch embedding reads.
    """

    def __init__(self, config: MiTConfig, *, drop_path_rate: float = 0.1, in_channels: int = 3) -> None:
        super().__init__()
        total = sum(config.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear 0 -> rate
        stages, start, channels = [], 0, in_channels
        for i, (hidden, depth) in enumerate(zip(config.hidden_sizes, config.depths)):
            stages.append(MiTStage(i, channels, hidden, rates[start : start + depth]))
            start, channels = start + depth, hidden
        self.stages = nn.ModuleList(stages)
        strides = (4, 8, 16, 32)
        self.feature_info = {
            f"stage{i + 1}": FeatureInfo(c, s) for i, (c, s) in enumerate(zip(config.hidden_sizes, strides))
        }
        self.apply(_init_encoder)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for name, stage in zip(self.feature_info, self.stages):
            x = stage(x)
            features[name] = x
        return features


def _init_encoder(m: nn.Module) -> None:
    # The authors' initialisation: truncated normal (std 0.02) Linears, He (fan-out) convs.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
        nn.init.zeros_(m.bias)


class ChannelLinear(nn.Module):
    """A Linear over the channels of an NCHW map (a 1x1 conv, stored as transformers' ``proj`` Linear)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class AllMLPDecoder(nn.Module):
    """Per-stage Linear to ``channels``, up-sample to stride 4, concatenate (deepest first), 1x1 fuse + BN + ReLU,
    Dropout(0.1), 1x1 classifier; logits at stride 4."""

    def __init__(self, in_channels: tuple[int, ...], channels: int, num_classes: int) -> None:
        super().__init__()
        self.linear_projections = nn.ModuleList(ChannelLinear(c, channels) for c in in_channels)
        self.linear_fuse = nn.Conv2d(channels * len(in_channels), channels, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # MMSegmentation's (the authors' framework) decode-head initialisation.
        nn.init.kaiming_normal_(self.linear_fuse.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        first, *deeper = (linear(f) for f, linear in zip(features, self.linear_projections))
        projected = [first, *(resize_to(y, first) for y in deeper)]  # all at stride 4
        x = F.relu(self.batch_norm(self.linear_fuse(torch.cat(projected[::-1], dim=1))))
        return self.classifier(self.dropout(x))


class SegFormer(SegmentationModel):
    """MiT encoder -> all-MLP decoder (stride 4) -> bilinear to input; no auxiliary head."""

    def __init__(self, encoder: MixTransformer, decode_head: AllMLPDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decode_head = decode_head

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": resize_to(self.decode_head(list(self.encoder(x).values())), x)}


@register_model
def segformer(
    *,
    num_classes: int,
    backbone: MiTVariant = "mit_b0",
    weights: str | None = None,
    drop_path_rate: float = 0.1,
    in_channels: int = 3,
) -> SegFormer:
    """SegFormer on MiT-B0 (3.8M parameters at 150 classes) ... MiT-B5 (84.7M).

    ``weights``: a local Hugging Face ``transformers`` checkpoint — a ``.safetensors`` or
    ``.bin`` file or a ``save_pretrained`` folder — of ``SegformerForSemanticSegmentation``
    (the whole model; its class count must be ``num_classes``) or of ``SegformerModel`` /
    an ImageNet ``nvidia/mit-b*`` encoder (the encoder only; the decoder starts fresh); its RGB
    patch embedding is adapted to ``in_channels``.
    ``drop_path_rate``: stochastic depth of the last block (the authors' 0.1).
    """
    check_choice("segformer", "backbone", backbone, get_args(MiTVariant))
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"segformer drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    config = MIT_CONFIGS[backbone]
    encoder = MixTransformer(config, drop_path_rate=drop_path_rate, in_channels=in_channels)
    model = SegFormer(encoder, AllMLPDecoder(config.hidden_sizes, config.decoder_channels, num_classes))
    if weights is not None:
        # Imported here: transformers_compat reads MIT_CONFIGS from this module.
        from semseg.models.transformers_compat import load_transformers_segformer

        load_transformers_segformer(model, weights)
    return model
