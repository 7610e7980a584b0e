"""Fixtures for the serving tests: a real `semseg serve` process per module, and a test photo."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="serving needs the serve extra: pip install 'semseg[serve]'")

from serving_helpers import Server, make_checkpoint, start_server, stop_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Limits made small so that the oversize tests stay small: 256 KiB bodies, 1 megapixel."""
    folder = tmp_path_factory.mktemp("serve")
    running = start_server(make_checkpoint(folder / "model.safetensors"), folder / "server.log",
                           "--max-upload-mb", "0.25", "--max-pixels", "1000000")  # fmt: skip
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60x80 RGB PNG with smooth structure, so the model's labels vary across it."""
    yy, xx = np.mgrid[0:60, 0:80]
    rgb = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(rgb).save(path)
    return path
