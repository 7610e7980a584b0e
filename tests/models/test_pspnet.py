"""PSPNet's export-friendly pyramid pooling equals nn.AdaptiveAvgPool2d, and the head exports."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

import semseg
from semseg.models.pspnet import AdaptiveAvgPool, PSPHead, PyramidPooling, adaptive_pooling_matrix

# Sizes the bins (1, 2, 3, 6) mostly do not divide, including maps smaller than 6.
SIZES = [(13, 17), (5, 7), (4, 3), (1, 1), (12, 18), (65, 33)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_pooling_equals_adaptive_avg_pool(size, bins):
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    torch.testing.assert_close(AdaptiveAvgPool(bins)(x), nn.AdaptiveAvgPool2d(bins)(x))


def test_pooling_matrix_rows_are_pytorchs_bins():
    # 13 positions into 6 bins: floor(i*13/6) .. ceil((i+1)*13/6), overlapping where uneven.
    m = adaptive_pooling_matrix(13, 6, torch.empty(()))
    spans = [tuple(row.nonzero().flatten().tolist()) for row in m]
    assert spans == [(0, 1, 2), (2, 3, 4), (4, 5, 6), (6, 7, 8), (8, 9, 10), (10, 11, 12)]
    torch.testing.assert_close(m.sum(1), torch.ones(6))


def test_pyramid_concatenates_input_and_reduced_levels():
    pyramid = PyramidPooling(64, bins=(1, 2, 3, 6)).eval()
    assert pyramid.out_channels == 64 + 4 * 16
    x = torch.randn(2, 64, 13, 17)
    y = pyramid(x)
    assert y.shape == (2, 128, 13, 17)
    torch.testing.assert_close(y[:, :64], x)
    # The 1x1 bin is constant over the map after up-sampling.
    level1 = y[:, 64:80]
    torch.testing.assert_close(level1, level1[:, :, :1, :1].expand_as(level1))


def test_head_exports_with_dynamic_feature_size():
    torch.manual_seed(0)
    head = PSPHead(32, 3).eval()
    dims = {"input": {2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    exported = torch.export.export(head, (torch.randn(1, 32, 8, 8),), dynamic_shapes=dims).module()
    x = torch.randn(1, 32, 13, 17)  # a size the export never saw, not divisible by 2, 3 or 6
    with torch.no_grad():
        torch.testing.assert_close(exported(x), head(x))


def test_bad_bins():
    with pytest.raises(ValueError, match="bins must be positive ints"):
        semseg.create_model("pspnet", num_classes=2, bins=(1, 0))
