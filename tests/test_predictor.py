import io
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
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


RADIUS = 2  # two stacked 3x3 convolutions: each output pixel sees a 5x5 neighbourhood


def context_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()


def context_predictor(model: nn.Module | None = None, **options) -> Predictor:
    """A predictor whose output at a pixel depends on its 5x5 neighbourhood, so tiling does matter near seams."""
    return Predictor(model or context_model(), classes=["a", "b", "c"], palette=PALETTE, mean=(0.5,) * 3,
                     std=(0.25,) * 3, **options)  # fmt: skip


def far_from_seams(size: int, tile: int, overlap: float) -> np.ndarray:
    """Pixels at least ``RADIUS`` from every edge of every window covering them (image borders excepted):
    there, each window sees what the whole image sees, so blending must give the whole image's answer."""
    stride = max(1, int(tile * (1 - overlap)))
    starts = sorted({min(i * stride, size - tile) for i in range(-(-(size - tile) // stride) + 1)})
    good = np.ones(size, dtype=bool)
    for start in starts:
        inside = np.zeros(size, dtype=bool)
        inside[start : start + tile] = True
        lo = 0 if start == 0 else start + RADIUS
        hi = size if start + tile == size else start + tile - RADIUS
        good &= ~inside | (np.arange(size) >= lo) & (np.arange(size) < hi)
    return good


@pytest.mark.parametrize("size", [(97, 131), (300, 80), (20, 20)])
def test_sliding_window_equals_whole_image_for_a_pointwise_model(size):
    image = random_image(*size)
    labels, probs = pointwise_predictor()(image, return_probs=True)
    tiled_labels, tiled_probs = pointwise_predictor(tile=48, overlap=0.25)(image, return_probs=True)
    assert labels.shape == size and probs.shape == (3, *size)
    np.testing.assert_allclose(tiled_probs, probs, rtol=1e-5, atol=1e-6)
    assert np.array_equal(tiled_labels, labels)
    assert np.array_equal(pointwise_predictor(tile=48)(image), labels)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("size", [(97, 131), (150, 64)])
def test_sliding_window_matches_whole_image_away_from_the_seams(size, overlap):
    # overlap=0 used to crash on any image at least twice the tile (the band carry-over took -0: rows)
    image = random_image(*size, seed=1)
    _, whole = context_predictor()(image, return_probs=True)
    labels, tiled = context_predictor(tile=48, overlap=overlap)(image, return_probs=True)
    good = far_from_seams(size[0], 48, overlap)[:, None] & far_from_seams(size[1], 48, overlap)[None, :]
    assert good.mean() > 0.5
    np.testing.assert_allclose(tiled[:, good], whole[:, good], rtol=1e-5, atol=1e-6)
    assert np.abs(tiled - whole).max() > 1e-3  # the model does see across seams: this test could fail
    assert np.array_equal(labels, tiled.argmax(0))
    assert np.array_equal(context_predictor(tile=48, overlap=overlap)(image), labels)


def test_flip_tta_averages_the_image_and_its_mirror():
    image = random_image(40, 50)
    predictor = context_predictor()
    _, plain = predictor(image, return_probs=True)
    _, mirrored = predictor(np.ascontiguousarray(image[:, ::-1]), return_probs=True)
    _, flipped = context_predictor(flip=True)(image, return_probs=True)
    np.testing.assert_allclose(flipped, (plain + mirrored[:, :, ::-1]) / 2, rtol=1e-5, atol=1e-6)
    assert np.abs(flipped - plain).max() > 1e-3


def test_multi_scale_tta_is_the_average_of_the_resized_views():
    image = random_image(40, 50, seed=2)
    model = context_model()
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
    expected = torch.zeros(1, 3, 40, 50)
    with torch.no_grad():
        for size in [(32, 32), (40, 50), (60, 75)]:  # scales 0.5 (raised to the 32-pixel minimum), 1, 1.5
            view = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            probs = model(view).softmax(1)
            expected += F.interpolate(probs, size=(40, 50), mode="bilinear", align_corners=False) / 3
    labels, multi = context_predictor(model, scales=(0.5, 1.0, 1.5))(image, return_probs=True)
    np.testing.assert_allclose(multi, expected[0].numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(labels, expected[0].argmax(0).numpy())


def test_input_scale_multiplies_every_test_time_scale():
    image = random_image(40, 50, seed=4)
    model = context_model()
    _, scaled = context_predictor(model, input_scale=1.5)(image, return_probs=True)
    _, as_tta = context_predictor(model, scales=(1.5,))(image, return_probs=True)
    np.testing.assert_allclose(scaled, as_tta, rtol=1e-6, atol=1e-7)
    _, both = context_predictor(model, input_scale=2.0, scales=(0.75, 1.0))(image, return_probs=True)
    _, product = context_predictor(model, scales=(1.5, 2.0))(image, return_probs=True)
    np.testing.assert_allclose(both, product, rtol=1e-6, atol=1e-7)
    assert np.abs(scaled - context_predictor(model)(image, return_probs=True)[1]).max() > 1e-3
    with pytest.raises(ValueError, match="input_scale must be positive, got 0"):
        context_predictor(model, input_scale=0)


class SizeRecorder(nn.Module):
    """Wraps a model and records the size of every input it sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.model(x)


def test_images_over_max_whole_pixels_are_tiled_automatically():
    image = random_image(100, 90, seed=3)  # 9,000 pixels
    recorder = SizeRecorder(context_model())
    labels, probs = context_predictor(recorder, max_whole_pixels=4096)(image, return_probs=True)
    assert recorder.sizes and max(h * w for h, w in recorder.sizes) <= 4096  # 64x64 windows
    _, tiled = context_predictor(tile=64)(image, return_probs=True)
    np.testing.assert_allclose(probs, tiled, rtol=1e-5, atol=1e-6)
    recorder.sizes.clear()
    context_predictor(recorder, max_whole_pixels=9000)(image)
    assert recorder.sizes == [(100, 90)]  # at the bound: run whole
    recorder.sizes.clear()
    context_predictor(recorder, max_whole_pixels=None)(random_image(3000, 1500))  # None: never tiled
    assert recorder.sizes == [(3000, 1500)]
    recorder.sizes.clear()
    context_predictor(recorder)(random_image(2100, 2100))  # over the default bound of 2048 x 2048 pixels
    assert recorder.sizes and set(recorder.sizes) <= {(1024, 1024)}  # AUTO_TILE windows


def test_the_automatic_tiling_bound_is_on_the_pixels_the_model_sees():
    image = random_image(40, 40, seed=5)  # 1,600 pixels, 6,400 at input scale 2
    recorder = SizeRecorder(context_model())
    context_predictor(recorder, max_whole_pixels=4096)(image)
    assert recorder.sizes == [(40, 40)]
    recorder.sizes.clear()
    context_predictor(recorder, max_whole_pixels=4096, input_scale=2.0)(image)
    assert recorder.sizes and set(recorder.sizes) == {(64, 64)}  # 32-pixel windows of the image, doubled
    recorder.sizes.clear()
    context_predictor(recorder, tile=32, input_scale=2.0)(image)  # an explicit tile is in the image's pixels
    assert set(recorder.sizes) == {(64, 64)}
    recorder.sizes.clear()
    context_predictor(recorder, max_whole_pixels=4096, scales=(1.0, 2.0))(image)  # test-time scales count too
    assert recorder.sizes and max(h * w for h, w in recorder.sizes) <= 4096


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
    with pytest.raises(ValueError, match="a tensor image must be float in \\[0, 1\\] or uint8, got torch.int64"):
        to_rgb_array(torch.tensor([[[300, 1000]]] * 3))  # was wrapped modulo 256 to 44 and 232
    with pytest.raises(ValueError, match="tile must be at least 32"):
        pointwise_predictor(tile=16)
    with pytest.raises(ValueError, match="max_whole_pixels must be at least 1024"):
        pointwise_predictor(max_whole_pixels=100)


@pytest.mark.parametrize(("values", "said"), [((0.0, 255.0), "0..255"), ((-0.5, 0.5), "-0.5..0.5"),
                                              ((0.0, float("nan")), "nan")])
def test_a_float_tensor_beyond_0_1_is_refused_not_clamped_to_white(values, said):
    # torch.from_numpy(uint8_array).float(): 0..255, which clamping turned into a nearly white image.
    tensor = torch.tensor([[list(values)]] * 3)
    with pytest.raises(ValueError, match=f"a float tensor image must hold values in \\[0, 1\\], got .*{said}.*"
                                         "divide a 0..255 tensor by 255"):
        to_rgb_array(tensor)
    assert to_rgb_array(torch.tensor([[[-0.004, 1.004]]] * 3)).tolist() == [[[0, 0, 0], [255, 255, 255]]]  # resampling


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3), (0, 0)])
def test_an_image_without_pixels_is_a_value_error(shape):
    with pytest.raises(ValueError, match="the image has no pixels"):
        to_rgb_array(np.zeros(shape, np.uint8))


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


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_as_pillow_does(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(random_image(20, 40, seed=orientation)).save(tmp_path / "o.png", exif=exif)
    with Image.open(tmp_path / "o.png") as opened:
        expected = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    assert np.array_equal(to_rgb_array(tmp_path / "o.png"), expected)


def test_a_malformed_exif_tag_does_not_stop_the_image(tmp_path):
    # A camera's Software string stored under tag 293 (T6Options, a number): Pillow reads it, but
    # ImageOps.exif_transpose re-encodes the EXIF of its turned copy and fails with struct.error.
    exif = Image.Exif()
    exif[0x0112], exif[0x0131] = 6, "Cam"
    buffer = io.BytesIO()
    Image.fromarray(random_image(20, 40, seed=3)).save(buffer, "JPEG", exif=exif)  # JPEG: no checksum over the EXIF
    data = buffer.getvalue().replace(b"\x01\x31\x00\x02", b"\x01\x25\x00\x02")
    (tmp_path / "bad_exif.jpg").write_bytes(data)
    with Image.open(tmp_path / "bad_exif.jpg") as opened:
        stored = np.asarray(opened.convert("RGB"))
        with pytest.raises(struct.error):
            ImageOps.exif_transpose(opened)
    assert np.array_equal(to_rgb_array(tmp_path / "bad_exif.jpg"), np.rot90(stored, -1))


@pytest.mark.parametrize("overlap", [1 / 3, 0.75])  # 0.75: windows of a band reach two bands down
def test_row_shares_of_the_sliding_window_equal_the_whole_image(overlap):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 5, padding=2))
    predictor = Predictor(model.eval(), classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3, mean=(0.5,) * 3,
                          std=(0.25,) * 3, tile=40, overlap=overlap)  # fmt: skip
    rgb = np.random.default_rng(0).integers(0, 256, (150, 97, 3), dtype=np.uint8)

    def read(top, left, rows, cols):
        return rgb[top : top + rows, left : left + cols]

    whole = np.zeros((3, 150, 97), np.float32)
    for block, top, left in predictor.probability_blocks(150, 97, read):
        whole[:, top : top + block.shape[1], left : left + block.shape[2]] = block
    bands = predictor.row_bands(150, 97)
    assert len(bands) > 3 and bands[0][0] == 0 and bands[-1][1] == 150
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))  # contiguous, no gaps or overlaps
    shares = np.full((3, 150, 97), np.nan, np.float32)
    for rows in ((bands[0][0], bands[1][1]), (bands[2][0], bands[-1][1])):
        for block, top, left in predictor.probability_blocks(150, 97, read, rows=rows):
            assert rows[0] <= top and top + block.shape[1] <= rows[1]
            shares[:, top : top + block.shape[1], left : left + block.shape[2]] = block
    assert np.array_equal(shares, whole)  # every pixel, bit for bit
