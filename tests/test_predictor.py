import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import semseg
from semseg.engine.checkpoint import save_weights
from semseg.inference import Predictor, to_rgb_array

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


def pointwise_predictor(**options) -> Predictor:
    """A 1x1-conv "model": its output at a pixel depends on that pixel only, so tiling must not change it."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 1)
    return Predictor(model, classes=["a", "b", "c"], palette=PALETTE, mean=(0.5,) * 3, std=(0.25,) * 3, **options)


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(97, 131), (300, 80), (20, 20)])
def test_sliding_window_equals_whole_image_for_a_pointwise_model(size):
    image = random_image(*size)
    labels, probs = pointwise_predictor()(image, return_probs=True)
    tiled_labels, tiled_probs = pointwise_predictor(tile=48, overlap=0.25)(image, return_probs=True)
    assert labels.shape == size and probs.shape == (3, *size)
    np.testing.assert_allclose(tiled_probs, probs, rtol=1e-5, atol=1e-6)
    assert np.array_equal(pointwise_predictor(tile=48)(image), labels)


def test_flip_tta_of_a_pointwise_model_changes_nothing():
    image = random_image(40, 50)
    _, plain = pointwise_predictor()(image, return_probs=True)
    _, flipped = pointwise_predictor(flip=True)(image, return_probs=True)
    np.testing.assert_allclose(flipped, plain, rtol=1e-5, atol=1e-6)
    _, multi = pointwise_predictor(scales=(0.5, 1.0, 1.5))(image, return_probs=True)
    assert multi.shape == plain.shape and np.allclose(multi.sum(0), 1, atol=1e-5)


def test_every_input_kind_gives_the_same_labels(tmp_path):
    image = random_image(33, 47)
    Image.fromarray(image).save(tmp_path / "x.png")
    predictor = pointwise_predictor()
    expected = predictor(image)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    for kind in [str(tmp_path / "x.png"), tmp_path / "x.png", Image.fromarray(image), tensor, tensor.float() / 255]:
        assert np.array_equal(predictor(kind), expected), type(kind)
    assert [p.shape for p in predictor.predict_batch([image, image[:40, :32]])] == [(33, 47), (33, 32)]


def test_bad_inputs_are_explained(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        to_rgb_array(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="must be uint8"):
        to_rgb_array(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_rgb_array(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="tile must be at least 32"):
        pointwise_predictor(tile=16)


def test_from_checkpoint_uses_the_checkpoints_classes_and_normalisation(tmp_path):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    path = save_weights(model, tmp_path / "m.safetensors", classes=["a", "b", "c"], palette=PALETTE,
                        mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2])  # fmt: skip
    predictor = Predictor.from_checkpoint(path)
    image = random_image(50, 70)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - 0.4) / 0.2
    with torch.no_grad():
        expected = model(x).argmax(1)[0].numpy()
    assert predictor.classes == ["a", "b", "c"]
    assert np.array_equal(predictor(image), expected)


def test_labels_alone_equal_the_argmax_of_the_probabilities():
    # Labels without probabilities skip the softmax; the answer must not change.
    predictor = pointwise_predictor()
    image = random_image(61, 83, seed=5)
    labels, probs = predictor(image, return_probs=True)
    assert np.array_equal(predictor(image), labels)
    assert np.array_equal(labels, probs.argmax(0))
    assert probs.shape == (3, 61, 83) and np.allclose(probs.sum(0), 1, atol=1e-5)


def test_exif_orientation_is_applied(tmp_path):
    image = random_image(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": viewers show it 40 tall and 20 wide
    Image.fromarray(image).save(tmp_path / "turned.jpg", exif=exif, quality=100)
    upright = to_rgb_array(tmp_path / "turned.jpg")
    assert upright.shape == (40, 20, 3)
