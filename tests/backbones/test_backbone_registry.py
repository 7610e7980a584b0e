"""create_backbone / list_backbones: one level of name lookup onto typed builders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from semseg.backbones import create_backbone, list_backbones

NAMES = ["mobilenet_v3_large", "resnet101", "resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn"]


def test_lists_every_backbone() -> None:
    assert list_backbones() == NAMES


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError, match="resnet51.*mobilenet_v3_large, resnet101"):
        create_backbone("resnet51")


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError):
        create_backbone("resnet18", outputstride=8)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "output_stride"),
    [("resnet50", 8), ("resnet18", 16), ("mobilenet_v3_large", 16), ("vgg16", 32)],
)
def test_output_stride_reaches_the_builder(name: str, output_stride: int) -> None:
    backbone = create_backbone(name, output_stride=output_stride)
    assert list(backbone.feature_info.values())[-1].stride == output_stride


@pytest.mark.parametrize(("name", "output_stride"), [("vgg16_bn", 16), ("mobilenet_v3_large", 8), ("resnet34", 4)])
def test_unsupported_output_stride_fails(name: str, output_stride: int) -> None:
    with pytest.raises(ValueError, match="output_stride"):
        create_backbone(name, output_stride=output_stride)


def test_weights_are_loaded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = create_backbone("resnet18").state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    torch.manual_seed(1)
    backbone = create_backbone("resnet18", output_stride=8, weights=path)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in state.items())
    assert backbone.feature_info["layer4"].stride == 8
