"""16-bit images reach every model the same way in training, evaluation and prediction: scaled, never clipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semseg
from semseg.data.base import read_image
from semseg.engine.checkpoint import save_weights
from semseg.inference.predictor import Predictor, to_rgb_array


@pytest.fixture
def sixteen_bit(tmp_path):
    ramp = (np.arange(40 * 48).reshape(40, 48) * 34).astype(np.uint16)  # 0 .. 65246: the full range
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    eight = tmp_path / "ramp8.png"
    Image.fromarray(np.rint(ramp / 257).astype(np.uint8)).save(eight)
    return path, eight


def test_prediction_reads_16_bit_as_training_does(sixteen_bit, tmp_path):
    path, eight = sixteen_bit
    assert np.array_equal(to_rgb_array(path), read_image(path))
    assert np.array_equal(to_rgb_array(path), to_rgb_array(eight))  # not PIL's clip to 255 (a white image)
    torch.manual_seed(0)
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.classifier.bias.zero_()  # an untrained model then gives varied labels
    ckpt = save_weights(model, tmp_path / "m.safetensors", classes=["a", "b", "c"], palette=[[0, 0, 0]] * 3,
                        mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    predictor = Predictor.from_checkpoint(ckpt, backend="torch")
    labels = predictor(path)
    assert np.array_equal(labels, predictor(eight)) and len(np.unique(labels)) > 1


def test_twelve_bit_data_in_16_bits_is_said_loudly(tmp_path):
    path = tmp_path / "micro.png"
    Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16)).save(path)
    with pytest.warns(UserWarning, match="micro.png: 16-bit image whose values stay below 4001 .* nearly black"):
        read_image(path)
    with pytest.warns(UserWarning, match="micro.png: 16-bit image"):
        to_rgb_array(path)


def test_32_bit_integers_beyond_16_bits_are_refused_not_clipped(tmp_path):
    path = tmp_path / "counts.tif"
    Image.fromarray(np.array([[0, 70000], [5, 1_000_000]] * 8, dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    with pytest.raises(ValueError, match=r"counts.tif: integer values 0..1000000, outside the 0..65535 that is scaled to 8 bits"):
        to_rgb_array(path)
    small = tmp_path / "small.tif"  # 32-bit storage of values that fit 16 bits: scaled as 16-bit data
    Image.fromarray(np.array([[0, 65535]] * 8, dtype=np.int32)).save(small)
    assert to_rgb_array(small)[0].tolist() == [[0, 0, 0], [255, 255, 255]]
