"""Every recipe in configs/ loads, validates, and names a model that builds with its options."""

from pathlib import Path

import pytest
import torch

import semseg
from semseg.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_camvid_recipes_for_every_seed_family_and_the_newer_ones():
    models = {load_config(p).model.name for p in CONFIGS if p.name.endswith("_camvid.yaml")}
    assert {"fcn8s", "segnet", "unet", "pspnet", "deeplabv3", "deeplabv3plus", "lraspp"} <= models
    assert {"segformer", "bisenetv2", "ddrnet_23_slim", "ddrnet_23"} <= models


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_loads_and_its_model_builds(path):
    config = load_config(path)
    with torch.device("meta"):
        semseg.create_model(config.model.name, num_classes=11, **config.model.options)
