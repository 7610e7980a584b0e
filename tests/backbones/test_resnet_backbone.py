"""ResNet backbone: torchvision parameter counts and key names, feature shapes, dilation layout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from semseg.backbones import resnet18, resnet34, resnet50, resnet101

BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}

# torchvision's published totals minus the ImageNet fc (512*1000+1000 or 2048*1000+1000).
TORCHVISION_PARAMS_WITHOUT_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}


@pytest.mark.parametrize("name", BUILDERS)
def test_parameter_count_matches_torchvision(name: str) -> None:
    model = BUILDERS[name]()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS_WITHOUT_FC[name]


@pytest.mark.parametrize(
    ("name", "num_keys"),
    # torchvision's state_dict lengths (122 and 320) minus fc.weight and fc.bias.
    [("resnet18", 120), ("resnet50", 318)],
)
def test_state_dict_keys_follow_torchvision(name: str, num_keys: int) -> None:
    keys = BUILDERS[name]().state_dict().keys()
    assert len(keys) == num_keys
    expected = {
        "conv1.weight",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.conv2.weight",
    }
    if name == "resnet50":
        expected |= {"layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "layer4.2.bn3.weight"}
    assert expected <= set(keys)
    assert not any(k.startswith("fc.") for k in keys)


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_features_match_feature_info(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = BUILDERS[name](output_stride=output_stride).eval()
    expected_strides = {"stem": 2, "layer1": 4, "layer2": 8}
    expected_strides["layer3"] = min(16, output_stride)
    expected_strides["layer4"] = output_stride
    assert {k: v.stride for k, v in model.feature_info.items()} == expected_strides
    assert list(model.feature_info) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    h, w = 97, 131  # odd sizes: every stride-2 layer pads (k-1)/2, so sizes round up
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert list(feats) == list(model.feature_info)
    for key, info in model.feature_info.items():
        expected = (1, info.channels, math.ceil(h / info.stride), math.ceil(w / info.stride))
        assert tuple(feats[key].shape) == expected, key


def _dilations(stage: nn.Sequential, conv: str) -> list[int]:
    return [getattr(block, conv).dilation[0] for block in stage]


def test_bottleneck_dilation_matches_torchvision_replace_stride_with_dilation() -> None:
    # torchvision: the first block of a dilated stage keeps the previous dilation.
    os16 = resnet50(output_stride=16)
    assert _dilations(os16.layer3, "conv2") == [1] * 6
    assert _dilations(os16.layer4, "conv2") == [1, 2, 2]
    assert os16.layer4[0].conv2.stride == (1, 1)
    assert os16.layer4[0].downsample[0].stride == (1, 1)
    os8 = resnet50(output_stride=8)
    assert _dilations(os8.layer3, "conv2") == [1, 2, 2, 2, 2, 2]
    assert _dilations(os8.layer4, "conv2") == [2, 4, 4]
    assert os8.layer3[0].conv2.stride == (1, 1)
    assert os8.layer3[0].downsample[0].stride == (1, 1)
    os32 = resnet50()
    assert _dilations(os32.layer4, "conv2") == [1, 1, 1]
    assert os32.layer4[0].conv2.stride == (2, 2)


def test_basic_block_dilation_keeps_receptive_field() -> None:
    # conv1 sits where the stride was (previous dilation); conv2 runs on the finer grid.
    model = resnet18(output_stride=8)
    assert _dilations(model.layer3, "conv1") == [1, 2]
    assert _dilations(model.layer3, "conv2") == [2, 2]
    assert _dilations(model.layer4, "conv1") == [2, 4]
    assert _dilations(model.layer4, "conv2") == [4, 4]
    assert all(m.stride == (1, 1) for m in model.layer4.modules() if isinstance(m, nn.Conv2d))


def test_invalid_output_stride_is_rejected() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        resnet18(output_stride=4)


def test_backward_reaches_every_parameter() -> None:
    model = resnet18(output_stride=16)
    feats = model(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in feats.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
