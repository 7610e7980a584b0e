"""Shared fixtures: single-threaded, seeded torch and the built-in shapes dataset at test sizes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from semseg.data.synthetic import ShapesConfig, SyntheticShapes

# The CLI's `train` tunes glibc's allocator for the whole process (semseg.allocator); the suite
# runs hundreds of tests in one process, so it keeps glibc's defaults (an explicit setting wins).
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))


@pytest.fixture(autouse=True)
def _deterministic() -> Iterator[None]:
    # One thread: the tests' tensors are tiny, so intra-op threads only add
    # synchronisation, and on a busy 2-core CI machine OpenMP's spin-waiting threads
    # made the same forwards ~50x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Checkpoints run on OpenVINO by default are converted into a cache; the tests' go to a
    # temporary folder (shared by the whole run, so each test checkpoint converts once), never ~/.cache.
    previous = os.environ.get("SEMSEG_CACHE_DIR")
    os.environ["SEMSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("semseg-cache"))
    yield
    if previous is None:
        del os.environ["SEMSEG_CACHE_DIR"]
    else:
        os.environ["SEMSEG_CACHE_DIR"] = previous


@pytest.fixture
def tiny_shapes() -> SyntheticShapes:
    """Eight 32x32 samples: enough for a forward pass, a batch, a metric."""
    return SyntheticShapes(8, seed=123, config=ShapesConfig(size=32))
