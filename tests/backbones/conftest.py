"""Run the backbone tests single-threaded.

Their tensors are tiny, so intra-op threads only add synchronisation; on a busy CI
machine OpenMP's spin-waiting threads made the same forwards ~50x slower.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
