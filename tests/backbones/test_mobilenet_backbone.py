"""MobileNetV3-Large backbone: torchvision structure and parameter count, taps, dilation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semseg.backbones import MobileNetV3, mobilenet_v3_large
from semseg.backbones.mobilenet import InvertedResidual, SqueezeExcitation, _make_divisible

# torchvision mobilenet_v3_large: 5,483,032 in all, minus classifier Linear(960, 1280)
# and Linear(1280, 1000).
TORCHVISION_FEATURE_PARAMS = 5_483_032 - (960 * 1280 + 1280) - (1280 * 1000 + 1000)


def test_parameter_count_matches_torchvision_features() -> None:
    assert TORCHVISION_FEATURE_PARAMS == 2_971_952
    assert sum(p.numel() for p in MobileNetV3().parameters()) == TORCHVISION_FEATURE_PARAMS


def test_make_divisible_follows_torchvision() -> None:
    # SE squeeze widths of mobilenet_v3_large: 72 -> 24, 120 -> 32, 480 -> 120, 672/960 -> 168/240.
    assert [_make_divisible(c // 4, 8) for c in (72, 120, 480, 672, 960)] == [24, 32, 120, 168, 240]
    assert _make_divisible(3, 8) == 8


def test_structure_and_key_names_follow_torchvision() -> None:
    model = MobileNetV3()
    assert len(model.features) == 17
    stem = model.features[0]
    assert [type(m) for m in stem] == [nn.Conv2d, nn.BatchNorm2d, nn.Hardswish]
    assert all(isinstance(model.features[i], InvertedResidual) for i in range(1, 16))
    assert len(model.features[1].block) == 2  # nothing to expand: depthwise + project
    assert isinstance(model.features[4].block[2], SqueezeExcitation)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 308
    expected = {
        "features.0.0.weight": (16, 3, 3, 3),
        "features.1.block.0.0.weight": (16, 1, 3, 3),
        "features.1.block.1.0.weight": (16, 16, 1, 1),
        "features.4.block.0.0.weight": (72, 24, 1, 1),
        "features.4.block.1.0.weight": (72, 1, 5, 5),
        "features.4.block.2.fc1.weight": (24, 72, 1, 1),
        "features.4.block.2.fc2.bias": (72,),
        "features.4.block.3.0.weight": (40, 72, 1, 1),
        "features.7.block.2.0.weight": (80, 240, 1, 1),
        "features.13.block.1.0.weight": (672, 1, 5, 5),
        "features.15.block.3.1.running_var": (160,),
        "features.16.0.weight": (960, 160, 1, 1),
        "features.16.1.weight": (960,),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 1e-3 and bn.momentum == 0.1 for bn in bns)


@pytest.mark.parametrize("dilated", [False, True])
def test_features_match_feature_info(dilated: bool) -> None:
    torch.manual_seed(0)
    model = MobileNetV3(dilated=dilated).eval()
    out_stride = 16 if dilated else 32
    assert {k: (v.channels, v.stride) for k, v in model.feature_info.items()} == {
        "low": (40, 8),
        "out": (960, out_stride),
    }
    with torch.no_grad():
        for h, w in [(64, 64), (97, 131)]:
            feats = model(torch.randn(1, 3, h, w))
            assert list(feats) == ["low", "out"]
            for key, info in model.feature_info.items():
                expected = (1, info.channels, math.ceil(h / info.stride), math.ceil(w / info.stride))
                assert tuple(feats[key].shape) == expected, key


def test_low_tap_is_torchvision_features_4() -> None:
    # torchvision's lraspp/deeplabv3 builders return features.4 as "low".
    torch.manual_seed(0)
    model = MobileNetV3().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["low"], model.features[:5](x))
        assert torch.equal(model(x)["out"], model.features(x))


def test_dilated_last_stage_trades_stride_for_dilation() -> None:
    plain, dilated = MobileNetV3(), MobileNetV3(dilated=True)
    for i in (13, 14, 15):
        dw_plain, dw_dilated = plain.features[i].block[1][0], dilated.features[i].block[1][0]
        assert dw_dilated.dilation == (2, 2)
        assert dw_dilated.stride == (1, 1)
        assert dw_plain.dilation == (1, 1)
        assert dw_dilated.padding == (4, 4)
    assert plain.features[13].block[1][0].stride == (2, 2)
    assert dilated.features[12].block[1][0].dilation == (1, 1)


def test_builder_maps_output_stride() -> None:
    assert mobilenet_v3_large(output_stride=16).feature_info["out"].stride == 16
    assert mobilenet_v3_large().feature_info["out"].stride == 32
    with pytest.raises(ValueError, match="output_stride"):
        mobilenet_v3_large(output_stride=8)
