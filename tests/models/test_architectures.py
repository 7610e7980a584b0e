"""Per-paper structure: SegNet, U-Net's ResNet encoders, DeepLab's rates and strides, LR-ASPP.

Structure is checked on the meta device (free for any size of model); the forward
contracts of every model are in test_all_models.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import semseg
from semseg.layers import max_pool_switches, max_unpool


def meta(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return semseg.create_model(name, **options)


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_segnet_mirrors_vgg16_bn():
    model = meta("segnet", num_classes=21)
    assert len(convs(model.backbone)) == 13
    assert len(convs(model.decoder)) + 1 == 13  # the classifier ends the first stage
    assert [len(block) for block in model.decoder] == [3, 3, 3, 2, 1]
    assert model.decoder[0][-1][0].out_channels == 512 and model.decoder[-1][-1][0].out_channels == 64


def test_segnet_unpools_to_the_argmax_positions():
    x = torch.randn(1, 64, 7, 9)
    pooled, switches = max_pool_switches(x)
    restored = max_unpool(pooled, switches, x.shape[-2:])
    assert restored.shape == x.shape
    kept = restored != 0
    assert torch.equal(restored[kept], x[kept])  # each maximum back where it was
    assert (restored != 0).sum() == pooled.numel()  # sparse: one value per 2x2 window


def test_segnet_basic_is_four_stages_of_64_channel_7x7():
    model = meta("segnet_basic", num_classes=11)
    assert len(model.encoder) == len(model.decoder) == 4
    assert all(c.kernel_size == (7, 7) and c.out_channels == 64 for c in convs(model.encoder) + convs(model.decoder))
    assert not any(isinstance(m, nn.ReLU) for m in model.decoder.modules())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_unet_resnet_encoders(backbone):
    model = meta("unet", num_classes=2, backbone=backbone)
    assert model.skips == ["layer3", "layer2", "layer1", "stem"]
    assert model.model_config["backbone"] == backbone


def test_unet_resnet18_real_forward_at_odd_size():
    model = semseg.create_model("unet", num_classes=2, backbone="resnet18").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 37)).shape == (1, 2, 45, 37)


def test_unet_rejects_original_encoder_options_with_a_resnet():
    with pytest.raises(ValueError, match="original encoder only"):
        semseg.create_model("unet", num_classes=2, backbone="resnet18", depth=3)


def _rates(aspp) -> list[int]:
    return [branch[0].dilation[0] for branch in aspp.convs[1:4]]


@pytest.mark.parametrize(
    ("name", "options", "stride", "rates"),
    [
        ("deeplabv3", {}, 8, [12, 24, 36]),  # torchvision's default
        ("deeplabv3", {"output_stride": 16}, 16, [6, 12, 18]),
        ("deeplabv3", {"backbone": "mobilenet_v3_large"}, 16, [12, 24, 36]),  # torchvision's choice
        ("deeplabv3plus", {}, 16, [6, 12, 18]),
        ("deeplabv3plus", {"output_stride": 8}, 8, [12, 24, 36]),
        ("deeplabv3plus", {"backbone": "mobilenet_v3_large"}, 16, [6, 12, 18]),
    ],
)
def test_deeplab_output_stride_and_atrous_rates(name, options, stride, rates):
    model = meta(name, num_classes=21, **options)
    aspp = model.classifier[0] if name == "deeplabv3" else model.classifier.aspp
    assert _rates(aspp) == rates
    deep = list(model.backbone.feature_info.values())[-1]
    assert deep.stride == stride
    with torch.device("meta"):
        features = model.backbone(torch.empty(1, 3, 96, 128))
    assert list(features.values())[-1].shape[-2:] == (96 // stride, 128 // stride)


def test_deeplabv3plus_decoder_projects_low_level_features_to_48():
    model = meta("deeplabv3plus", num_classes=21, backbone="resnet50")
    assert model.taps["low"] == "layer1" and model.classifier.low_project[0].in_channels == 256
    assert model.classifier.low_project[0].out_channels == 48
    assert model.classifier.fuse[0][0].in_channels == 256 + 48
    mobile = meta("deeplabv3plus", num_classes=21, backbone="mobilenet_v3_large", aux=True)
    assert mobile.classifier.low_project[0].in_channels == 40
    assert mobile.aux_classifier[0].in_channels == 40


def test_mobilenet_deeplab_has_no_output_stride_8():
    with pytest.raises(ValueError, match=r"output_stride 8 is not available; valid output_strides: 16"):
        semseg.create_model("deeplabv3", num_classes=2, backbone="mobilenet_v3_large", output_stride=8)


def test_lraspp_has_no_aux_option():
    assert "aux" not in semseg.model_options("lraspp")
    model = meta("lraspp", num_classes=21)
    assert model.aux_weight == 0.0
    assert model.backbone.feature_info["low"].stride == 8 and model.backbone.feature_info["out"].stride == 16
