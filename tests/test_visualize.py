import numpy as np
import pytest
from PIL import Image

from semseg.visualize import colorize, palette_image, plot_curves, side_by_side

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


def test_palette_png_round_trips_the_ids(tmp_path):
    mask = np.array([[0, 1], [2, 1]])
    palette_image(mask, PALETTE).save(tmp_path / "m.png")
    back = Image.open(tmp_path / "m.png")
    assert back.mode == "P"
    assert np.array_equal(np.array(back), mask)
    assert np.array_equal(np.array(back.convert("RGB"))[0, 1], [255, 0, 0])


def test_palette_image_rejects_bad_masks():
    with pytest.raises(ValueError, match="must be 2-D"):
        palette_image(np.zeros((2, 2, 3)), PALETTE)
    with pytest.raises(ValueError, match="0..255"):
        palette_image(np.array([[300]]), PALETTE)


def test_colorize_and_side_by_side():
    mask = np.array([[0, 2], [255, 1]])
    rgb = colorize(mask, PALETTE)
    assert rgb.tolist() == [[[0, 0, 0], [0, 255, 0]], [[255, 255, 255], [255, 0, 0]]]
    panel = side_by_side(np.zeros((2, 2, 3), np.uint8), mask, mask, PALETTE)
    assert panel.size == (2 * 3 + 4 * 2, 2)


def test_plot_curves_writes_a_png(tmp_path):
    path = plot_curves([{"epoch": 1, "loss": 1.0, "mIoU": 0.2}, {"epoch": 2, "loss": 0.5, "mIoU": 0.4}], tmp_path / "c.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400
