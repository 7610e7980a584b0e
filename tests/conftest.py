"""Shared fixtures: the built-in shapes dataset at test-friendly sizes."""

from __future__ import annotations

import pytest
import torch

from semseg.data.synthetic import ShapesConfig, SyntheticShapes


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_shapes() -> SyntheticShapes:
    """Eight 32x32 samples: enough for a forward pass, a batch, a metric."""
    return SyntheticShapes(8, seed=123, config=ShapesConfig(size=32))
