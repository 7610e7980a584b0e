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


def test_label_maps_of_many_classes_and_stray_ids(tmp_path):
    long_palette = [(i % 256, 7, 0) for i in range(300)]  # a palette may list more colours than a mask uses
    palette_image(np.array([[0, 5]], np.uint8), long_palette).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as back:
        assert back.mode == "P" and np.array(back.convert("RGB"))[0, 1].tolist() == [5, 7, 0]
    wide = np.array([[0, 299], [65535, 256]], np.uint16)  # the label maps of a model of > 256 classes
    palette_image(wide, long_palette).save(tmp_path / "w.png")
    with Image.open(tmp_path / "w.png") as back:
        assert np.array_equal(np.array(back), wide)
    assert colorize(wide, long_palette).tolist() == [[[0, 7, 0], [43, 7, 0]], [[255, 255, 255], [0, 7, 0]]]
    stray = np.array([[-1, 10**12], [2, 3]], np.int64)  # ids no class has: the ignore colour, no huge table
    assert colorize(stray, PALETTE).tolist() == [[[255, 255, 255]] * 2, [[0, 255, 0], [255, 255, 255]]]


def test_plot_curves_writes_a_png(tmp_path):
    path = plot_curves([{"epoch": 1, "loss": 1.0, "mIoU": 0.2}, {"epoch": 2, "loss": 0.5, "mIoU": 0.4}], tmp_path / "c.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400
