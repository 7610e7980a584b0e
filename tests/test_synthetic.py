import numpy as np
import pytest
import torch

from semseg.data.synthetic import CLASSES, ShapesConfig, SyntheticShapes, generate_sample


def test_same_seed_and_index_give_identical_samples():
    a_img, a_mask = generate_sample(7, 3)
    b_img, b_mask = generate_sample(7, 3)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)


def test_different_seeds_and_indices_differ():
    img, _ = generate_sample(7, 3)
    assert not np.array_equal(img, generate_sample(8, 3)[0])
    assert not np.array_equal(img, generate_sample(7, 4)[0])


def test_sample_shapes_dtypes_and_label_range():
    ds = SyntheticShapes(20, seed=1)
    for i in range(len(ds)):
        image, mask = ds.raw(i)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert mask.shape == (48, 48) and mask.dtype == np.int64
        assert mask.min() >= 0 and mask.max() < len(CLASSES)
    x, y = ds[0]
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32
    assert y.shape == (48, 48) and y.dtype == torch.int64


def test_config_size_is_honoured():
    image, mask = generate_sample(0, 0, ShapesConfig(size=40))
    assert image.shape == (40, 40, 3) and mask.shape == (40, 40)


def test_classes_are_balanced():
    # Over many samples every object class covers a similar share of pixels, and objects
    # appear in nearly every image.
    counts = np.zeros(len(CLASSES))
    for i in range(300):
        counts += np.bincount(generate_sample(5, i)[1].ravel(), minlength=len(CLASSES))
    objects = counts[1:] / counts[1:].sum()
    assert objects.min() > 0.18 and objects.max() < 0.32, objects
    assert 0.45 < counts[0] / counts.sum() < 0.85


def test_normalisation_constants_match_the_data():
    images = np.stack([generate_sample(9, i)[0] for i in range(400)]).astype(np.float64) / 255
    assert np.allclose(images.mean(axis=(0, 1, 2)), SyntheticShapes.mean, atol=0.04)
    assert np.allclose(images.std(axis=(0, 1, 2)), SyntheticShapes.std, atol=0.04)


def test_colour_alone_cannot_solve_it():
    # The best per-pixel colour rule (majority class of each quantised RGB bin, fitted on
    # the very images it is scored on) must stay far below what the demo's U-Net reaches.
    bins = 16
    images, masks = zip(*(generate_sample(11, i) for i in range(300)))
    colour = (np.stack(images) // (256 // bins)).reshape(-1, 3).astype(np.int64)
    key = (colour[:, 0] * bins + colour[:, 1]) * bins + colour[:, 2]
    label = np.stack(masks).ravel()
    table = np.zeros((bins**3, len(CLASSES)), dtype=np.int64)
    np.add.at(table, (key, label), 1)
    pred = table.argmax(1)[key]
    ious = [((pred == c) & (label == c)).sum() / ((pred == c) | (label == c)).sum() for c in range(len(CLASSES))]
    assert np.mean(ious) < 0.45, ious


def test_invalid_length_and_index():
    with pytest.raises(ValueError, match="length must be >= 1"):
        SyntheticShapes(0)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticShapes(3).raw(3)
