"""Training windows read from large image/label rasters: deterministic per seed, resumable, class-balanced,
and a validation grid that covers every pixel once."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from semseg.config import load_config
from semseg.data import load_description
from semseg.engine.trainer import fit

rasterio = pytest.importorskip("rasterio")

H, W = 300, 410


def write(path, data, **extra):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=str(data.dtype), **extra) as dst:  # fmt: skip
        dst.write(data)


@pytest.fixture
def rasters(tmp_path):
    """Two big-ish scenes per split: 3-band uint16 images, labels with a rare class 2 (a 12x12 square)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
        for i in range(2):
            label = np.zeros((1, H, W), dtype=np.uint8)
            label[0, :, W // 2 :] = 1
            label[0, 100 + 50 * i : 112 + 50 * i, 40:52] = 2
            image = (rng.normal(3000, 50, (3, H, W)) + 400.0 * label).astype(np.uint16)
            write(tmp_path / split / "images" / f"s{i}.tif", image)
            write(tmp_path / split / "labels" / f"s{i}.tif", label)
    description = tmp_path / "scenes.yaml"
    description.write_text("classes: [ground, water, tower]\nbands: 3\n"
                           "windows: {size: [64, 64], per_epoch: 12, class_balanced: BALANCED}\nsplits:\n"
                           "  train: {images: train/images, masks: train/labels}\n"
                           "  val: {images: val/images, masks: val/labels}\n")  # fmt: skip
    return description


def dataset(description, balanced: bool, sampling="random", seed=0):
    text = description.read_text().replace("BALANCED", "true" if balanced else "false")
    path = description.with_name(f"d{int(balanced)}.yaml")
    path.write_text(text)
    return load_description(path).dataset("train", sampling=sampling, seed=seed)


def test_random_windows_are_a_function_of_seed_and_index(rasters):
    a, b = dataset(rasters, False), dataset(rasters, False)
    order = [a.window(i) for i in range(12)]
    assert [b.window(i) for i in reversed(range(12))] == order[::-1]  # the order of access does not matter
    assert len(set(order)) > 6  # places vary
    image, mask = a.raw(3)
    p, top, left = order[3]
    with rasterio.open(a.pairs[p][0]) as src:
        expected = src.read(window=rasterio.windows.Window(left, top, 64, 64)).transpose(1, 2, 0)
    assert image.dtype == np.float32 and np.array_equal(image, expected.astype(np.float32))  # full precision
    assert mask.shape == (64, 64)
    a.reseed(1)
    assert [a.window(i) for i in range(12)] != order


def test_class_balanced_windows_see_the_rare_class(rasters):
    def share_with_tower(ds):
        return np.mean([(ds.raw(i)[1] == 2).any() for i in range(len(ds))])

    plain, balanced = dataset(rasters, False), dataset(rasters, True)
    balanced.per_epoch = plain.per_epoch = 60
    assert share_with_tower(balanced) >= 0.25 > share_with_tower(plain)  # a third of draws pick the tower class


def test_the_grid_covers_every_pixel_once(rasters):
    grid = dataset(rasters, False, sampling="grid")
    assert len(grid) == 2 * 5 * 7  # ceil(300 / 64) x ceil(410 / 64) per scene
    counts = np.zeros(3, dtype=np.int64)
    for i in range(len(grid)):
        _, mask = grid.raw(i)
        counts += np.bincount(mask[mask != 255], minlength=3)
    with rasterio.open(grid.pairs[0][1]) as a, rasterio.open(grid.pairs[1][1]) as b:
        truth = np.bincount(np.concatenate([a.read(1).ravel(), b.read(1).ravel()]), minlength=3)
    assert counts.tolist() == truth.tolist()  # past the edge is ignored, nothing counted twice


def test_training_on_windows_resumes_exactly(rasters, tmp_path):
    description = rasters.with_name("d1.yaml")
    description.write_text(rasters.read_text().replace("BALANCED", "true"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
model: {{name: unet, options: {{base_channels: 4, depth: 2}}}}
data: {{dataset: {description}, batch_size: 4, val_batch_size: 4, workers: 0}}
optim: {{name: sgd, lr: 0.05}}
epochs: 2
channels_last: false
""")
    straight, split = tmp_path / "straight", tmp_path / "split"
    result = fit(load_config(recipe, [f"out={straight}"]), progress=False)
    assert result["history"][-1]["val_mIoU"] is not None
    config = load_config(recipe, [f"out={split}"])
    fit(config, stop_after=1, progress=False)
    fit(config, resume=True, progress=False)
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(split / "last.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    from semseg.inference.evaluation import evaluate_checkpoint

    # semseg evaluate reads the val rasters in the same grid of windows as the trainer's validation
    metrics = evaluate_checkpoint(straight / "last.safetensors", str(description), backend="torch", progress=False)
    assert metrics["mIoU"] == pytest.approx(result["history"][-1]["val_mIoU"], abs=1e-6)


def test_data_check_reads_raster_pairs_block_by_block(rasters, tmp_path):
    from semseg.data import check_path

    description = rasters.with_name("d0.yaml")
    description.write_text(rasters.read_text().replace("BALANCED", "false"))
    report = check_path(description)
    assert report.ok, report.problems
    with rasterio.open(rasters.parent / "train" / "labels" / "s0.tif") as a, \
         rasterio.open(rasters.parent / "train" / "labels" / "s1.tif") as b:  # fmt: skip
        truth = np.bincount(np.concatenate([a.read(1).ravel(), b.read(1).ravel()]), minlength=3)
    assert report.class_pixels("train").tolist() == truth.tolist()
    mean, _ = report.band_statistics()
    assert np.allclose(mean, load_description(description).dataset("train", sampling="grid").measure_statistics()[0])
    write(rasters.parent / "train" / "labels" / "s1.tif", np.full((1, H, W), 7, dtype=np.uint8))
    problems = check_path(description).problems
    assert any("s1.tif" in f and "values 7 are not classes 0..2" in m for _, f, m in problems)
