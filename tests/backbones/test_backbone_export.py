"""Backbones export with torch.export (no data-dependent branches) and match eager mode."""

from __future__ import annotations

import torch
from torch.export import Dim

from semseg.backbones import create_backbone


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key])


def test_dilated_resnet_exports_with_dynamic_height_and_width() -> None:
    torch.manual_seed(0)
    model = create_backbone("resnet18", output_stride=8).eval()
    # From 64 px: at 32 the stride-32 map would be 1x1, which export specialises on.
    dynamic = {"x": {2: Dim("height", min=64, max=1024), 3: Dim("width", min=64, max=1024)}}
    exported = torch.export.export(model, (torch.randn(1, 3, 64, 64),), dynamic_shapes=dynamic).module()
    x = torch.randn(1, 3, 97, 131)  # a size the export never saw
    with torch.no_grad():
        _assert_same(exported(x), model(x))


def test_mobilenet_exports() -> None:
    # Static shapes only: MobileNetV3's dynamic-shape export takes ~10 s on CPU and
    # adds nothing the ResNet case above does not cover (no resizing in a backbone).
    torch.manual_seed(0)
    model = create_backbone("mobilenet_v3_large", output_stride=16).eval()
    x = torch.randn(1, 3, 97, 131)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        _assert_same(exported(x), model(x))
