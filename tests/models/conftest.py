"""Shared setup for the model tests: tiny configurations, ``--update-golden``.

Regenerate the golden outputs (after an intended change to a model's initialisation
or computation) with::

    python -m pytest tests/models/test_golden.py --update-golden
"""

from __future__ import annotations

from typing import Any

import pytest

# Small-but-real configurations for the tests that run every registered model; models
# not listed run with their defaults, so a new model is covered the day it is registered.
# The heavy defaults (VGG16 FCNs, ResNet-50/101) are also measured on the meta device.
TINY_OPTIONS: dict[str, dict[str, Any]] = {
    # fcn8s keeps its VGG16 default (a 134M-parameter model); the other skip variants
    # run on ResNet-50 here and on VGG16 in test_fcn.py.
    "fcn32s": {"backbone": "resnet50"},
    "fcn16s": {"backbone": "resnet50"},
    "pspnet": {"backbone": "resnet18"},
    "deeplabv3": {"backbone": "resnet18", "aux": True},
    "deeplabv3plus": {"backbone": "resnet18", "aux": True},
    "unet": {"base_channels": 4},
    "segformer": {"backbone": "mit_b0"},  # the smallest variant (3.7M parameters)
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/models/golden.json from the current models instead of comparing",
    )


def tiny_options(name: str) -> dict[str, Any]:
    """The options the per-model tests build ``name`` with."""
    return dict(TINY_OPTIONS.get(name, {}))


@pytest.fixture(scope="session")
def tiny() -> Any:
    """``tiny(name)`` -> options for the tests that run every registered model."""
    return tiny_options


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden", default=False))
