"""``in_channels``: every model reads 1, 4, ... channels, and RGB weights are adapted to it as timm does.

The adaptation rule (timm's ``adapt_input_conv``): one channel sums the RGB kernels; other
counts repeat them cyclically and scale by ``3 / in_channels``. It is checked here on
written-out numbers and by what it is for: a conv adapted to one channel gives on a grey
image what the RGB conv gives on that image in all three channels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import semseg
from semseg.backbones import create_backbone
from semseg.backbones.weights import adapt_input_conv
from semseg.engine.checkpoint import CheckpointError, load_model, read_metadata, save_weights
from semseg.engine.init_from import init_from

NUM_CLASSES = 3
UNET = {"base_channels": 4, "depth": 2}


@pytest.mark.parametrize("in_channels", [1, 4])
@pytest.mark.parametrize("name", semseg.list_models())
def test_every_model_reads_in_channels_and_keeps_logits_at_input_size(name, in_channels, tiny):
    model = semseg.create_model(name, num_classes=NUM_CLASSES, in_channels=in_channels, **tiny(name)).eval()
    assert model.model_config["in_channels"] == in_channels
    with torch.no_grad():
        y = model(torch.randn(1, in_channels, 64, 64))
    assert y.shape == (1, NUM_CLASSES, 64, 64)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("bad", [0, -2])
def test_in_channels_must_be_positive(bad):
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        semseg.create_model("unet", num_classes=2, in_channels=bad)


RGB = torch.arange(6.0).reshape(2, 3, 1, 1)  # out 0: kernels 0, 1, 2; out 1: 3, 4, 5


@pytest.mark.parametrize(
    ("in_channels", "expected"),
    [
        (1, [[3.0], [12.0]]),
        (2, [[0.0, 1.5], [4.5, 6.0]]),
        (3, [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]),
        (4, [[0.0, 0.75, 1.5, 0.0], [2.25, 3.0, 3.75, 2.25]]),
        (5, [[0.0, 0.6, 1.2, 0.0, 0.6], [1.8, 2.4, 3.0, 1.8, 2.4]]),
        (6, [[0.0, 0.5, 1.0, 0.0, 0.5, 1.0], [1.5, 2.0, 2.5, 1.5, 2.0, 2.5]]),
    ],
)
def test_adapt_input_conv_sums_for_one_channel_and_repeats_scaled_otherwise(in_channels, expected):
    adapted = adapt_input_conv(RGB, in_channels)
    assert adapted.shape == (2, in_channels, 1, 1)
    torch.testing.assert_close(adapted[..., 0, 0], torch.tensor(expected), rtol=0, atol=1e-6)


def test_adapt_input_conv_keeps_the_dtype_and_refuses_non_rgb_weights():
    assert adapt_input_conv(RGB.half(), 4).dtype == torch.float16
    with pytest.raises(ValueError, match=r"expected an RGB conv weight .* got shape \(2, 4, 1, 1\)"):
        adapt_input_conv(torch.zeros(2, 4, 1, 1), 1)


def test_adapted_convs_see_grey_and_repeated_images_as_the_rgb_conv_does():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(8, 3, 3, 3, generator=g), torch.randn(8, generator=g)
    # One channel: a grey image is the RGB image with three equal channels.
    grey = torch.randn(2, 1, 9, 11, generator=g)
    torch.testing.assert_close(F.conv2d(grey, adapt_input_conv(weight, 1), bias),
                               F.conv2d(grey.repeat(1, 3, 1, 1), weight, bias))  # fmt: skip
    # Six channels: the RGB image twice over, which the 3 / 6 scale maps back onto the RGB response.
    image = torch.randn(2, 3, 9, 11, generator=g)
    torch.testing.assert_close(F.conv2d(image.repeat(1, 2, 1, 1), adapt_input_conv(weight, 6), bias),
                               F.conv2d(image, weight, bias))  # fmt: skip


def _assert_adapted(model_state, source_state, adapted_keys, in_channels, prefix=""):
    """Each adapted key holds the adapted source weight, every other source key its value unchanged."""
    for key, value in source_state.items():
        ours = model_state[prefix + key]
        if prefix + key in adapted_keys:
            assert ours.shape[1] == in_channels, key
            torch.testing.assert_close(ours, adapt_input_conv(value, in_channels), rtol=0, atol=0)
        else:
            assert torch.equal(ours, value), key


@pytest.mark.parametrize(("name", "backbone", "first_conv", "in_channels"), [
    ("unet", "resnet18", "conv1.weight", 4),
    ("lraspp", "mobilenet_v3_large", "features.0.0.weight", 1),  # its depthwise (C, 1, k, k) convs stay as they are
])  # fmt: skip
def test_backbone_weights_adapt_the_input_conv_and_load_the_rest(tmp_path, name, backbone, first_conv, in_channels):
    torch.manual_seed(0)
    source = create_backbone(backbone).state_dict()
    torch.save({**source, "classifier.weight": torch.zeros(10, 4)}, tmp_path / "imagenet.pth")
    model = semseg.create_model(name, num_classes=NUM_CLASSES, backbone=backbone,
                                backbone_weights=str(tmp_path / "imagenet.pth"), in_channels=in_channels)  # fmt: skip
    _assert_adapted(model.state_dict(), source, {f"backbone.{first_conv}"}, in_channels, prefix="backbone.")


def test_transformers_segformer_weights_adapt_the_patch_embedding(tmp_path):
    torch.manual_seed(0)
    source = semseg.create_model("segformer", num_classes=NUM_CLASSES).state_dict()
    save_file(source, tmp_path / "model.safetensors")  # semseg's key names pass the rename table unchanged
    model = semseg.create_model("segformer", num_classes=NUM_CLASSES, in_channels=4, weights=str(tmp_path))
    _assert_adapted(model.state_dict(), source, {"encoder.stages.0.patch_embeddings.proj.weight"}, 4)


@pytest.mark.parametrize(("name", "options", "in_channels", "input_convs"), [
    ("unet", UNET, 4, ["encoder.stem.0.0.weight"]),
    ("bisenetv2", {"aux": False}, 1, ["detail.0.0.weight", "semantic.stem.conv.0.weight"]),  # two input convs
])  # fmt: skip
def test_init_from_an_rgb_checkpoint_adapts_the_input_convs_and_says_so(tmp_path, name, options, in_channels,
                                                                        input_convs):  # fmt: skip
    torch.manual_seed(0)
    path = save_weights(semseg.create_model(name, num_classes=NUM_CLASSES, **options), tmp_path / "rgb.safetensors")
    source = load_model(path)[0].state_dict()
    model = semseg.create_model(name, num_classes=NUM_CLASSES, in_channels=in_channels, **options)
    report = init_from(model, str(path))
    assert report.reinitialised == [] and report.adapted == input_convs and report.loaded == len(source)
    _assert_adapted(model.state_dict(), source, set(input_convs), in_channels)
    line = report.describe(path)
    assert line.endswith(f"re-initialised (shape differs): none; adapted from RGB to the model's input channels: "
                         f"{', '.join(input_convs)}")  # fmt: skip


def test_a_four_channel_checkpoint_reloads_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = semseg.create_model("unet", num_classes=NUM_CLASSES, in_channels=4, **UNET).eval()
    path = save_weights(model, tmp_path / "four.safetensors", mean=[0.5] * 4, std=[0.25] * 4)
    loaded, meta = load_model(path)
    assert meta["model_config"]["in_channels"] == 4 and meta["mean"] == [0.5] * 4
    x = torch.randn(2, 4, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    wrong = save_weights(model, tmp_path / "rgb_mean.safetensors", mean=[0.5] * 3, std=[0.25] * 4)
    with pytest.raises(CheckpointError, match="metadata mean has 3 values for 4 input channels"):
        read_metadata(wrong)
