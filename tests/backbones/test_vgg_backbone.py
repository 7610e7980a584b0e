"""VGG16 backbone: torchvision layout, pooled features, SegNet stages, fc6/fc7 as convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semseg.backbones import vgg16, vgg16_bn, vgg_fc_as_conv

BUILDERS = {"vgg16": vgg16, "vgg16_bn": vgg16_bn}
# torchvision's features.N index of each max-pool.
POOL_INDICES = {"vgg16": [4, 9, 16, 23, 30], "vgg16_bn": [6, 13, 23, 33, 43]}


@pytest.mark.parametrize(("name", "count"), [("vgg16", 14_714_688), ("vgg16_bn", 14_723_136)])
def test_parameter_count_matches_torchvision_features(name: str, count: int) -> None:
    assert sum(p.numel() for p in BUILDERS[name]().parameters()) == count


@pytest.mark.parametrize("name", BUILDERS)
def test_layout_matches_torchvision_indices(name: str) -> None:
    model = BUILDERS[name]()
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert pools == POOL_INDICES[name]
    assert len(model.features) == pools[-1] + 1
    assert [pool for _, pool in model.stage_bounds()] == pools
    assert model.stage_bounds()[0][0] == 0
    assert isinstance(model.features[0], nn.Conv2d)
    if name == "vgg16_bn":
        assert isinstance(model.features[1], nn.BatchNorm2d)
        assert model.features[41].weight.shape == (512,)
    else:
        assert model.features[28].weight.shape == (512, 512, 3, 3)


@pytest.mark.parametrize("name", BUILDERS)
def test_features_match_feature_info(name: str) -> None:
    model = BUILDERS[name]().eval()
    assert {k: (v.channels, v.stride) for k, v in model.feature_info.items()} == {
        "pool1": (64, 2),
        "pool2": (128, 4),
        "pool3": (256, 8),
        "pool4": (512, 16),
        "pool5": (512, 32),
    }
    with torch.no_grad():
        for h, w in [(64, 64), (97, 131)]:
            feats = model(torch.randn(1, 3, h, w))
            assert list(feats) == list(model.feature_info)
            for key, info in model.feature_info.items():
                # 2x2 max-pools floor odd sizes.
                assert tuple(feats[key].shape) == (1, info.channels, h // info.stride, w // info.stride), key


def test_stages_with_pool_indices_reproduce_forward() -> None:
    # How SegNet uses it: run each stage's convs, pool with indices, unpool later.
    torch.manual_seed(0)
    model = vgg16_bn().eval()
    x = torch.randn(1, 3, 67, 70)
    with torch.no_grad():
        expected = model(x)
        y = x
        for stage in range(5):
            pre = model.forward_stage(y, stage)
            y, indices = F.max_pool2d(pre, kernel_size=2, stride=2, return_indices=True)
            assert torch.equal(y, expected[f"pool{stage + 1}"])
            unpooled = F.max_unpool2d(y, indices, kernel_size=2, stride=2, output_size=pre.shape[-2:])
            assert unpooled.shape == pre.shape


def test_torchvision_fc6_fc7_convert_to_equivalent_convs() -> None:
    # torchvision's fc6 is a Linear over the flattened (512, 7, 7) pool5 map; the
    # converted 7x7 conv must compute the same on that map (and fc7 likewise as a 1x1).
    g = torch.Generator().manual_seed(0)
    w6 = torch.empty(4096, 512 * 7 * 7).uniform_(-0.01, 0.01, generator=g)
    w7 = torch.empty(4096, 4096).uniform_(-0.02, 0.02, generator=g)
    b6, b7 = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    state = {
        "classifier.0.weight": w6,
        "classifier.0.bias": b6,
        "classifier.3.weight": w7,
        "classifier.3.bias": b7,
        "classifier.6.weight": torch.zeros(1000, 4096),
    }
    conv = vgg_fc_as_conv(state)
    assert conv["fc6.weight"].shape == (4096, 512, 7, 7)
    assert conv["fc7.weight"].shape == (4096, 4096, 1, 1)
    x = torch.randn(2, 512, 7, 7, generator=g)
    conv6 = F.conv2d(x, conv["fc6.weight"], conv["fc6.bias"])
    # Sums of 25088 float32 products: allow rounding, far below what a wrong
    # (e.g. channels-last) reshape would give.
    torch.testing.assert_close(conv6.flatten(1), F.linear(x.flatten(1), w6, b6), rtol=1e-4, atol=1e-4)
    h = torch.relu(conv6)
    conv7 = F.conv2d(h, conv["fc7.weight"], conv["fc7.bias"])
    torch.testing.assert_close(conv7.flatten(1), F.linear(h.flatten(1), w7, b7), rtol=1e-4, atol=1e-4)


def test_timm_pre_logits_are_already_convs() -> None:
    # Narrow fc layers: the conversion passes timm's conv weights through whatever their width.
    w6, w7 = torch.randn(16, 512, 7, 7), torch.randn(16, 16, 1, 1)
    b6, b7 = torch.randn(16), torch.randn(16)
    state = {
        "pre_logits.fc1.weight": w6,
        "pre_logits.fc1.bias": b6,
        "pre_logits.fc2.weight": w7,
        "pre_logits.fc2.bias": b7,
    }
    conv = vgg_fc_as_conv(state)
    for key, ref in [("fc6.weight", w6), ("fc6.bias", b6), ("fc7.weight", w7), ("fc7.bias", b7)]:
        assert torch.equal(conv[key], ref)


def test_missing_fc_weights_raise() -> None:
    with pytest.raises(ValueError, match="classifier.0.weight"):
        vgg_fc_as_conv({"features.0.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(ValueError, match="classifier.3.weight"):
        vgg_fc_as_conv({"classifier.0.weight": torch.zeros(4096, 25088), "classifier.0.bias": torch.zeros(4096)})


def test_only_output_stride_32() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        vgg16(output_stride=16)
