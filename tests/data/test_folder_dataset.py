"""FolderDataset and the image/mask readers on miniature trees of every supported format."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from semseg.data import IMAGENET_MEAN, IMAGENET_STD, FolderDataset, read_image, read_mask

MASK = np.array([[0, 1, 2], [2, 1, 255]], dtype=np.uint8)


def test_index_png_mask_and_image_pixels_exact(tmp_path, save, rgb):
    image = rgb(2, 3)
    save(tmp_path / "images" / "a.png", image)
    save(tmp_path / "masks" / "a.png", MASK)
    ds = FolderDataset(tmp_path, classes=("x", "y", "z"))
    got_image, got_mask = ds.raw(0)
    assert got_image.dtype == np.uint8 and got_mask.dtype == np.int64
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_mask, MASK)
    assert ds.classes == ("x", "y", "z") and ds.ignore_index == 255 and len(ds.palette) == 3


def test_getitem_returns_normalised_tensors(tmp_path, save, rgb):
    image = rgb(2, 3)
    save(tmp_path / "images" / "a.png", image)
    save(tmp_path / "masks" / "a.png", MASK)
    x, y = FolderDataset(tmp_path, classes=3)[0]
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    expected = (image[0, 0, 1] / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert x[1, 0, 0].item() == pytest.approx(expected, abs=1e-6)
    assert y.tolist() == MASK.tolist()


def test_palette_mask_reads_indices_not_colours(tmp_path, save, rgb):
    palette = [0, 0, 0, 250, 10, 10, 10, 250, 10] + [7] * (253 * 3)
    save(tmp_path / "images" / "a.jpg", rgb(2, 3))
    path = save(tmp_path / "masks" / "a.png", MASK, palette=palette)
    assert Image.open(path).mode == "P"
    _, mask = FolderDataset(tmp_path, classes=3).raw(0)
    np.testing.assert_array_equal(mask, MASK)


def test_sixteen_bit_tiff_image_is_scaled_and_multipage_gives_first_page(tmp_path, save):
    grey = np.array([[0, 257 * 100, 65535], [1000, 257, 128]], dtype=np.uint16)
    path = tmp_path / "images" / "a.tif"
    path.parent.mkdir()
    second = Image.fromarray(np.full((2, 3), 500, dtype=np.uint16))
    Image.fromarray(grey).save(path, save_all=True, append_images=[second])
    assert Image.open(path).n_frames == 2
    image = read_image(path)
    expected = np.array([[0, 100, 255], [4, 1, 0]], dtype=np.uint8)
    assert image.shape == (2, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], expected)
    save(tmp_path / "masks" / "a.png", MASK)
    assert FolderDataset(tmp_path, classes=3).raw(0)[0].shape == (2, 3, 3)


def test_sixteen_bit_mask_raw_values_through_value_map(tmp_path, save, rgb):
    mask = np.array([[0, 1000], [40000, 0]], dtype=np.uint16)
    save(tmp_path / "images" / "a.bmp", rgb(2, 2))
    save(tmp_path / "masks" / "a.tif", mask)
    ds = FolderDataset(tmp_path, classes=2, value_map={0: 0, 1000: 1, 40000: 255})
    np.testing.assert_array_equal(ds.raw(0)[1], [[0, 1], [255, 0]])


def test_rgb_colour_mask_with_colour_table(tmp_path, save, rgb):
    colours = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 0, 255): 2, (255, 255, 255): 255}
    mask = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    save(tmp_path / "images" / "a.png", rgb(2, 2))
    save(tmp_path / "masks" / "a.png", mask)
    ds = FolderDataset(tmp_path, classes=("bg", "red", "blue"), colors=colours)
    np.testing.assert_array_equal(ds.raw(0)[1], [[0, 1], [2, 255]])
    assert ds.palette == ((0, 0, 0), (255, 0, 0), (0, 0, 255))


def test_unknown_colour_error_names_file_and_colours(tmp_path, save, rgb):
    mask = np.array([[[0, 0, 0], [1, 2, 3]], [[9, 9, 9], [0, 0, 0]]], dtype=np.uint8)
    save(tmp_path / "images" / "a.png", rgb(2, 2))
    save(tmp_path / "masks" / "a.png", mask)
    ds = FolderDataset(tmp_path, classes=1, colors={(0, 0, 0): 0})
    with pytest.raises(ValueError, match=r"a\.png.*\(1, 2, 3\), \(9, 9, 9\).*colors="):
        ds.raw(0)


def test_colour_mask_without_table_asks_for_colors(tmp_path, save, rgb):
    save(tmp_path / "images" / "a.png", rgb(2, 2))
    save(tmp_path / "masks" / "a.png", rgb(2, 2, seed=1))
    with pytest.raises(ValueError, match=r"colour mask.*colors="):
        FolderDataset(tmp_path, classes=2).raw(0)


def test_grey_saved_as_rgb_reads_as_grey(tmp_path, save):
    path = save(tmp_path / "m.png", np.repeat(MASK[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_mask(path), MASK)


def test_binary_mask_via_value_map(tmp_path, save, rgb):
    save(tmp_path / "img" / "a.webp", rgb(2, 2))
    save(tmp_path / "lbl" / "a_mask.png", np.array([[0, 255], [255, 0]], dtype=np.uint8))
    ds = FolderDataset(
        images_dir=tmp_path / "img", masks_dir=tmp_path / "lbl", classes=("bg", "fg"),
        value_map={0: 0, 255: 1}, mask_suffix="_mask",
    )  # fmt: skip
    np.testing.assert_array_equal(ds.raw(0)[1], [[0, 1], [1, 0]])
    assert ds.ignore_index == 255


def test_one_bit_mask_reads_as_0_255(tmp_path, save):
    path = save(tmp_path / "m.png", np.array([[0, 255]], dtype=np.uint8), mode="1")
    np.testing.assert_array_equal(read_mask(path), [[0, 255]])


def test_unmapped_value_error_names_file_and_values(tmp_path, save, rgb):
    save(tmp_path / "images" / "a.png", rgb(2, 3))
    save(tmp_path / "masks" / "a.png", MASK)
    with pytest.raises(ValueError, match=r"masks/a\.png: mask values 2 are not mapped.*value_map: \{0: 0, 1: 1, 255: 255, 2: 255\}"):
        FolderDataset(tmp_path, classes=2).raw(0)


def test_value_map_target_out_of_range_rejected(tmp_path, save, rgb):
    with pytest.raises(ValueError, match="neither class indices"):
        FolderDataset(tmp_path, classes=2, value_map={0: 0, 1: 5})


def test_missing_pairs_list_first_ten_stems_and_count(tmp_path, save, rgb):
    for i in range(12):
        save(tmp_path / "images" / f"img{i:02d}.png", rgb(2, 2))
    save(tmp_path / "masks" / "img00.png", MASK[:, :2])
    save(tmp_path / "masks" / "orphan.png", MASK[:, :2])
    with pytest.raises(FileNotFoundError) as err:
        FolderDataset(tmp_path, classes=3)
    msg = str(err.value)
    assert "11 images" in msg and "img01, img02" in msg and "img10" in msg and "(and 1 more)" in msg
    assert "img11" not in msg and "1 masks" in msg and "orphan" in msg


def test_duplicate_stems_are_ambiguous(tmp_path, save, rgb):
    save(tmp_path / "images" / "a.png", rgb(2, 2))
    save(tmp_path / "images" / "a.jpg", rgb(2, 2))
    save(tmp_path / "masks" / "a.png", MASK[:, :2])
    with pytest.raises(ValueError, match=r"a\.jpg, a\.png"):
        FolderDataset(tmp_path, classes=3)


def test_size_mismatch_names_both_files(tmp_path, save, rgb):
    save(tmp_path / "images" / "a.png", rgb(4, 4))
    save(tmp_path / "masks" / "a.png", MASK)
    with pytest.raises(ValueError, match=r"images/a\.png is 4x4 but mask .*masks/a\.png is 3x2"):
        FolderDataset(tmp_path, classes=3).raw(0)


def test_root_or_both_dirs_required(tmp_path):
    with pytest.raises(ValueError, match="either root"):
        FolderDataset(images_dir=tmp_path, classes=2)


def _sideways_photo(path, stored):
    """``stored`` pixels saved with EXIF orientation 6: viewers show them turned 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, exif=exif)


def test_a_photo_with_an_exif_orientation_is_read_upright_as_prediction_reads_it(tmp_path, rgb):
    from semseg.data.check import check_path
    from semseg.inference.predictor import to_rgb_array

    stored = rgb(2, 3)
    _sideways_photo(tmp_path / "images" / "a.png", stored)
    upright_mask = np.rot90(MASK, -1).copy()  # drawn on the photo as a browser shows it: 3 tall, 2 wide
    Image.fromarray(upright_mask).save((tmp_path / "masks").mkdir() or tmp_path / "masks" / "a.png")
    image, mask = FolderDataset(tmp_path, classes=3).raw(0)
    np.testing.assert_array_equal(image, np.rot90(stored, -1))
    np.testing.assert_array_equal(image, to_rgb_array(tmp_path / "images" / "a.png"))  # one reading everywhere
    np.testing.assert_array_equal(mask, upright_mask)
    assert check_path("folder", tmp_path).ok


def test_a_mask_of_the_stored_not_the_upright_photo_is_refused_naming_the_exif_turn(tmp_path, rgb):
    from semseg.data import DataError
    from semseg.data.check import check_path

    _sideways_photo(tmp_path / "images" / "a.png", rgb(2, 3))
    Image.fromarray(MASK).save((tmp_path / "masks").mkdir() or tmp_path / "masks" / "a.png")
    note = "its EXIF orientation 6 turns the 3x2 stored pixels upright, as viewers show the photo; a mask must match"
    with pytest.raises(DataError, match=re.escape(f"is 3x2 (WxH); they must match pixel for pixel ({note}")):
        FolderDataset(tmp_path, classes=3).raw(0)
    report = check_path("folder", tmp_path)
    assert not report.ok and any(note in problem for _, problem in report.errors)


@pytest.mark.parametrize("orientation", [3, 6])
def test_data_check_warns_about_every_photo_read_turned(tmp_path, rgb, orientation):
    # Orientation 3 (upside down) keeps the size: a mask of the stored pixels cannot be caught by its size.
    from semseg.data.check import check_path

    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb(4, 4)).save(tmp_path / "images" / "a.png", exif=exif)
    Image.fromarray(rgb(4, 4)).save(tmp_path / "images" / "b.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save((tmp_path / "masks").mkdir() or tmp_path / "masks" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "b.png")
    report = check_path("folder", tmp_path)
    assert report.ok
    assert (f"1 image(s) carry an EXIF orientation, so they are read turned upright (as viewers show them), and "
            f"their masks must match that upright view: {tmp_path / 'images' / 'a.png'}") in report.warnings
