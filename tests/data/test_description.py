"""Dataset description YAML: loading, the three mask formats, and errors that name the key."""

from __future__ import annotations

import numpy as np
import pytest

from semseg.data.description import DescriptionError, load_description

MASK = np.array([[0, 1, 2], [2, 1, 255]], dtype=np.uint8)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_index_description_builds_dataset_with_classes(tmp_path, save, rgb):
    save(tmp_path / "data" / "train" / "images" / "a.png", rgb(2, 3))
    save(tmp_path / "data" / "train" / "masks" / "a.png", MASK)
    yml = _write(
        tmp_path / "data" / "desc.yaml",
        "name: mine\nclasses: [background, person, car]\nsplits:\n  train: {images: train/images, masks: train/masks}\n",
    )
    desc = load_description(yml)
    assert desc.name == "mine" and desc.classes == ("background", "person", "car") and desc.ignore_index == 255
    assert desc.splits["train"].images == (tmp_path / "data" / "train" / "images").resolve()
    ds = desc.dataset("train")
    assert ds.classes == desc.classes and len(ds.palette) == 3
    np.testing.assert_array_equal(ds.raw(0)[1], MASK)
    with pytest.raises(KeyError, match=r"no split 'val'; its splits are \['train'\]"):
        desc.dataset("val")


def test_rgb_description_palette_flows_into_dataset(tmp_path, save, rgb):
    colours = np.array([[[10, 20, 30], [200, 0, 0]], [[0, 0, 0], [10, 20, 30]]], dtype=np.uint8)
    save(tmp_path / "im" / "a.jpg", rgb(2, 2))
    save(tmp_path / "mk" / "a.png", colours)
    yml = _write(
        tmp_path / "d.yml",
        "classes:\n  - {name: road, color: [10, 20, 30]}\n  - {name: car, color: [200, 0, 0]}\n"
        "mask_format: rgb\nignore_color: [0, 0, 0]\nsplits:\n  all: {images: im, masks: mk}\n",
    )
    desc = load_description(yml)
    assert desc.name == "d" and desc.palette == ((10, 20, 30), (200, 0, 0))
    ds = desc.dataset("all")
    assert ds.palette == ((10, 20, 30), (200, 0, 0)) and ds.classes == ("road", "car")
    assert ds.raw(0)[1].tolist() == [[0, 1], [255, 0]]


def test_binary_description_maps_255_to_foreground(tmp_path, save, rgb):
    save(tmp_path / "images" / "a.png", rgb(1, 3))
    save(tmp_path / "masks" / "a.png", np.array([[0, 255, 0]], dtype=np.uint8))
    yml = _write(
        tmp_path / "b.yaml", "classes: [bg, fg]\nmask_format: binary\nsplits:\n  s: {images: images, masks: masks}\n"
    )
    assert load_description(yml).dataset("s").raw(0)[1].tolist() == [[0, 1, 0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("classes: [a]\n", r"splits: missing"),
        ("classes: [a]\nsplits: {}\nnum_classes: 3\n", r"num_classes: unknown key; valid keys are name, classes"),
        ("classes: []\nsplits: {t: {images: i, masks: m}}\n", r"classes: expected a non-empty list"),
        ("classes: [a, a]\nsplits: {t: {images: i, masks: m}}\n", r"classes: class names \['a'\] appear more"),
        ("classes: [{name: a, color: [1, 2]}]\nsplits: {t: {images: i, masks: m}}\n", r"classes\[0\]\.color: expected"),
        ("classes: [a, b]\nmask_format: png\nsplits: {t: {images: i, masks: m}}\n", r"mask_format: expected one of"),
        ("classes: [a, b]\nmask_format: rgb\nsplits: {t: {images: i, masks: m}}\n", r"classes: mask_format rgb needs"),
        ("classes: [a, b, c]\nmask_format: binary\nsplits: {t: {images: i, masks: m}}\n", r"exactly 2 classes"),
        ("classes: [a, b]\nvalue_map: {0: 0, 255: 7}\nsplits: {t: {images: i, masks: m}}\n", r"value_map\[255\]"),
        ("classes: [a, b]\nignore_index: 1\nsplits: {t: {images: i, masks: m}}\n", r"ignore_index: 1 is a class"),
        ("classes: [a]\nsplits: {t: {images: i}}\n", r"splits\.t\.masks: expected a folder path"),
        ("classes: [a]\nsplits: {t: {images: i, masks: m, labels: l}}\n", r"splits\.t\.labels: unknown key"),
        ("classes: [a\n", r"is not valid YAML"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path, body, message):
    yml = _write(tmp_path / "bad.yaml", body)
    with pytest.raises(DescriptionError, match=message) as info:
        load_description(yml)
    assert str(yml) in str(info.value)


def test_utf16_descriptions_are_read_and_other_encodings_named(tmp_path):
    body = "classes: [caf\u00e9, road]\nsplits: {t: {images: i, masks: m}}\n"
    (tmp_path / "utf16.yaml").write_bytes(body.encode("utf-16"))  # PowerShell's > writes UTF-16
    assert load_description(tmp_path / "utf16.yaml").classes[0] == "caf\u00e9"
    (tmp_path / "latin1.yaml").write_bytes(body.encode("latin-1"))
    with pytest.raises(DescriptionError, match=r"latin1.yaml is not valid YAML: unacceptable character"):
        load_description(tmp_path / "latin1.yaml")


def test_missing_file(tmp_path):
    with pytest.raises(DescriptionError, match="does not exist"):
        load_description(tmp_path / "nope.yaml")
