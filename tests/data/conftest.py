"""Helpers for building miniature dataset trees in ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _save(path: Path, array: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)
    return path


@pytest.fixture
def save() -> Callable[..., Path]:
    """``save(path, array, mode=None, palette=None)``: write ``array`` as an image file, creating folders."""
    return _save


@pytest.fixture
def rgb() -> Callable[[int, int, int], np.ndarray]:
    """``rgb(h, w, seed)``: a deterministic random uint8 RGB image."""
    return lambda h, w, seed=0: np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
