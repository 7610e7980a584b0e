"""CamVid, VOC, Cityscapes and ADE20K on miniature trees, plus a smoke test on the real CamVid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from semseg.data import ADE20K, CamVid, Cityscapes, VOCSegmentation
from semseg.data.cityscapes import LABEL_TO_TRAIN
from semseg.data.voc import PALETTE as VOC_PALETTE

REAL_CAMVID = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "camvid"


def _camvid_tree(root: Path, save, rgb) -> np.ndarray:
    mask = np.array([[0, 10, 11], [3, 11, 5]], dtype=np.uint8)
    lines = []
    for name in ("b", "a"):  # the list's order, not the file names', decides the dataset's order
        save(root / "train" / f"{name}.png", rgb(2, 3))
        save(root / "trainannot" / f"{name}.png", mask)
        lines.append(f"/SegNet/CamVid/train/{name}.png /SegNet/CamVid/trainannot/{name}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return mask


def test_camvid_resolves_foreign_prefix_and_ignores_void(tmp_path, save, rgb):
    _camvid_tree(tmp_path, save, rgb)
    ds = CamVid(tmp_path, "train")
    assert [p[0].name for p in ds.pairs] == ["b.png", "a.png"]
    assert ds.pairs[0][0] == tmp_path / "train" / "b.png"
    image, mask = ds.raw(1)
    np.testing.assert_array_equal(mask, [[0, 10, 255], [3, 255, 5]])
    np.testing.assert_array_equal(image, rgb(2, 3))
    assert len(ds.classes) == 11 and ds.classes[6] == "SignSymbol" and ds.palette[4] == (60, 40, 222)


def test_camvid_without_list_pairs_by_name(tmp_path, save, rgb):
    _camvid_tree(tmp_path, save, rgb)
    (tmp_path / "train.txt").unlink()
    assert [p[0].name for p in CamVid(tmp_path, "train").pairs] == ["a.png", "b.png"]


def test_camvid_list_pointing_at_missing_files(tmp_path, save, rgb):
    _camvid_tree(tmp_path, save, rgb)
    (tmp_path / "trainannot" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 files listed in .*train\.txt do not exist: .*trainannot/a\.png"):
        CamVid(tmp_path, "train")


def test_voc_palette_mask_with_border(tmp_path, save, rgb):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    mask = np.array([[0, 0, 255, 15], [0, 255, 15, 15]], dtype=np.uint8)
    palette = [c for colour in VOC_PALETTE for c in colour] + [0] * (234 * 3) + [224, 224, 192]
    save(voc / "JPEGImages" / "2007_000032.jpg", rgb(2, 4))
    save(voc / "SegmentationClass" / "2007_000032.png", mask, palette=palette)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    ds = VOCSegmentation(tmp_path, "val")
    image, got = ds.raw(0)
    np.testing.assert_array_equal(got, mask)
    assert image.shape == (2, 4, 3) and len(ds.classes) == 21 and ds.classes[15] == "person"
    assert ds.palette[15] == (192, 128, 128)
    with pytest.raises(FileNotFoundError, match=r"train\.txt not found"):
        VOCSegmentation(tmp_path, "train")


def test_cityscapes_label_ids_to_train_ids(tmp_path, save, rgb):
    label_ids = np.array([[7, 26, 0], [33, 6, 24]], dtype=np.uint8)  # road, car, unlabeled; bicycle, ground, person
    save(tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png", rgb(2, 3))
    save(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", label_ids)
    ds = Cityscapes(tmp_path, "val")
    np.testing.assert_array_equal(ds.raw(0)[1], [[0, 13, 255], [18, 255, 11]])
    assert len(ds.classes) == 19 and ds.classes[13] == "car" and ds.palette[0] == (128, 64, 128)
    assert sorted(LABEL_TO_TRAIN.values()) == list(range(19))


def test_cityscapes_missing_mask(tmp_path, save, rgb):
    save(tmp_path / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png", rgb(2, 3))
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"1 images have no gtFine labelIds mask: .*aachen_000000_000019"):
        Cityscapes(tmp_path, "train")


def test_ade20k_shifts_values_and_ignores_zero(tmp_path, save, rgb):
    ade = tmp_path / "ADEChallengeData2016"
    save(ade / "images" / "validation" / "ADE_val_00000001.jpg", rgb(2, 3))
    stored = np.array([[0, 1, 150], [2, 0, 13]], dtype=np.uint8)
    save(ade / "annotations" / "validation" / "ADE_val_00000001.png", stored)
    ds = ADE20K(tmp_path, "val")
    np.testing.assert_array_equal(ds.raw(0)[1], [[255, 0, 149], [1, 255, 12]])
    assert len(ds.classes) == 150 and len(set(ds.palette)) == 150 and ds.classes[12] == "person"


def test_ade20k_rejects_value_above_150(tmp_path, save, rgb):
    ade = tmp_path / "ADEChallengeData2016"
    save(ade / "images" / "training" / "x.jpg", rgb(1, 2))
    save(ade / "annotations" / "training" / "x.png", np.array([[151, 1]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"x\.png: mask values 151 are not mapped"):
        ADE20K(ade, "train").raw(0)


@pytest.mark.skipif(not (REAL_CAMVID / "train.txt").is_file(), reason=f"real CamVid not found at {REAL_CAMVID}")
def test_real_camvid_smoke():
    ds = CamVid(REAL_CAMVID, "train")
    assert len(ds) == 367
    for i in range(3):
        image, mask = ds.raw(i)
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8 and mask.shape == (360, 480)
        assert set(np.unique(mask).tolist()) <= set(range(11)) | {255}
    x, y = ds[0]
    assert x.shape == (3, 360, 480) and y.dtype == torch.int64
