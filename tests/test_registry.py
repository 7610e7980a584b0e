import pytest

import semseg


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(KeyError, match="unknown model 'unet3'; available models: .*unet"):
        semseg.create_model("unet3", num_classes=2)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(TypeError, match="unknown option\\(s\\) base_channel for model 'unet'; valid options: backbone, base_channels"):
        semseg.create_model("unet", num_classes=2, base_channel=8)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_num_classes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        semseg.create_model("unet", num_classes=bad)


def test_model_config_rebuilds_the_same_architecture():
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    assert model.model_config == {
        "name": "unet", "num_classes": 3, "backbone": "none", "base_channels": 4, "depth": 2, "batch_norm": True,
        "backbone_weights": None, "in_channels": 3,
    }
    clone = semseg.create_model(**model.model_config)
    assert [(k, v.shape) for k, v in clone.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]


def test_model_options_reports_defaults():
    assert semseg.model_options("unet")["base_channels"] == 64


def test_model_backbones_default_first():
    from semseg.registry import model_backbones

    assert model_backbones("unet") == ("none", "resnet18", "resnet34", "resnet50")
    assert model_backbones("segnet") == ()
