"""FCN-32s/16s/8s: bilinear up-sampling alignment, paper initialisation, ImageNet fc6/fc7, any input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg
from semseg.models.fcn import BilinearUpsample, bilinear_kernel, fit_to


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_upsampling_starts_as_bilinear_interpolation_on_the_stride_grid(factor):
    # A stride-s cell i is centred on input pixel i*s + (s-1)/2, which is exactly where
    # F.interpolate(align_corners=False) puts it; away from the borders (where the
    # transposed conv sees zeros beyond the map) both interpolate identically.
    up = BilinearUpsample(2, factor)
    x = torch.randn(1, 2, 5, 7)
    with torch.no_grad():
        y = up(x)
    assert y.shape == (1, 2, 5 * factor, 7 * factor)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    inner = slice(factor, -factor)
    torch.testing.assert_close(y[..., inner, inner], ref[..., inner, inner])


def test_bilinear_kernel_is_the_fcn_authors_filter():
    k = bilinear_kernel(4)
    tent = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(k, tent[:, None] * tent[None, :])


def test_fit_to_crops_and_edge_pads():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    assert fit_to(x, torch.empty(1, 1, 2, 2)).tolist() == [[[[0.0, 1.0], [4.0, 5.0]]]]
    padded = fit_to(x, torch.empty(1, 1, 4, 6))
    assert padded.shape == (1, 1, 4, 6)
    assert padded[0, 0, 3].tolist() == [8.0, 9.0, 10.0, 11.0, 11.0, 11.0]


@pytest.mark.parametrize(("name", "skips"), [("fcn32s", 0), ("fcn16s", 1), ("fcn8s", 2)])
def test_paper_structure_on_meta(name, skips):
    with torch.device("meta"):
        model = semseg.create_model(name, num_classes=21)
    assert model.fc.fc6.kernel_size == (7, 7) and model.fc.fc6.padding == (3, 3)
    assert model.fc.fc7.out_channels == 4096
    assert len(model.score_skips) == skips
    assert model.upscore.stride == ({0: 32, 1: 16, 2: 8}[skips],) * 2


def test_skip_scores_are_zero_initialised_so_fcn8s_starts_as_its_coarse_path():
    model = semseg.create_model("fcn8s", num_classes=3, backbone="resnet50")
    for score in model.score_skips:
        assert score.weight.abs().sum() == 0 and score.bias.abs().sum() == 0
    assert model.score_fr.weight.abs().sum() > 0


def _constant(*shape: int, value: float = 0.0) -> torch.Tensor:
    # Right shape, one element of storage (see tests/backbones/test_backbone_weights.py).
    return torch.full((), value).expand(*shape)


def test_vgg_imagenet_weights_fill_backbone_and_fc6_fc7(tmp_path):
    state = {}
    in_channels = 3
    for index, width in [(0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256),
                         (17, 512), (19, 512), (21, 512), (24, 512), (26, 512), (28, 512)]:  # fmt: skip
        state[f"features.{index}.weight"] = _constant(width, in_channels, 3, 3, value=0.5)
        state[f"features.{index}.bias"] = _constant(width, value=0.25)
        in_channels = width
    row = torch.randn(1, 25088)
    state["classifier.0.weight"] = row.expand(4096, 25088)
    state["classifier.0.bias"] = _constant(4096, value=1.0)
    state["classifier.3.weight"] = _constant(4096, 4096, value=2.0)
    state["classifier.3.bias"] = _constant(4096, value=3.0)
    state["classifier.6.weight"] = _constant(1000, 4096)
    state["classifier.6.bias"] = _constant(1000)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)

    model = semseg.create_model("fcn32s", num_classes=2, backbone_weights=str(path))
    assert model.model_config["backbone_weights"] is None  # loaded into the weights; a checkpoint needs no path
    assert torch.equal(model.backbone.features[28].weight, state["features.28.weight"])
    torch.testing.assert_close(model.fc.fc6.weight[17], row.reshape(512, 7, 7))
    assert (model.fc.fc6.bias == 1.0).all() and (model.fc.fc7.weight == 2.0).all() and (model.fc.fc7.bias == 3.0).all()
