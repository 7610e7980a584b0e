"""Full-precision and N-band images (``bands: N``): read without rescaling, normalised by measured
per-band statistics, trained, stored in checkpoints, and predicted, exported and checked the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semseg
from semseg.config import ConfigError, load_config
from semseg.data import FolderDataset, check_path, load_description
from semseg.data.base import band_array, band_statistics, read_image
from semseg.data.description import DescriptionError
from semseg.data.transforms import resize_image, train_transforms
from semseg.engine.checkpoint import CheckpointError, read_metadata, save_weights
from semseg.engine.trainer import fit
from semseg.inference import Predictor
from semseg.inference.evaluation import evaluate_checkpoint
from semseg.inference.export import export
from semseg.inference.predict import predict_files

BANDS = 4


def scene(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A 4-band float image whose class (0 or 1) is only in band 3, a small offset on a large value
    (as a near-infrared band's reflectance is): lost by any 8-bit conversion, easy at full precision."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=np.uint8)
    top, left = rng.integers(0, size // 2, 2)
    mask[top : top + size // 2, left : left + size // 2] = 1
    image = rng.normal(1000.0, 5.0, (size, size, BANDS)).astype(np.float32)
    image[..., 3] = 20000.0 + 40.0 * mask + rng.normal(0, 2.0, (size, size))
    return image, mask


@pytest.fixture
def band_data(tmp_path):
    """A described dataset of .npy images (bands: 4, no statistics given) and PNG masks, train and val."""
    for split, seeds in (("train", range(16)), ("val", range(100, 104))):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        for seed in seeds:
            image, mask = scene(seed)
            np.save(tmp_path / split / "images" / f"s{seed}.npy", image)
            Image.fromarray(mask).save(tmp_path / split / "masks" / f"s{seed}.png")
    description = tmp_path / "bands.yaml"
    description.write_text("classes: [ground, field]\nbands: 4\nsplits:\n"
                           "  train: {images: train/images, masks: train/masks}\n"
                           "  val: {images: val/images, masks: val/masks}\n")  # fmt: skip
    return description


def test_band_array_keeps_16_bit_float_and_many_bands(tmp_path):
    sixteen = (np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)  # up to 61,360
    Image.fromarray(sixteen).save(tmp_path / "a.png")
    pixels = band_array(tmp_path / "a.png", 1)
    assert pixels.dtype == np.float32 and pixels.shape == (24, 32, 1)
    assert np.array_equal(pixels[..., 0], sixteen.astype(np.float32))  # not divided by 257, not clipped
    floats = np.random.default_rng(0).normal(0, 1e-3, (24, 32)).astype(np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    assert np.array_equal(band_array(tmp_path / "f.tif", 1)[..., 0], floats)
    cube = np.random.default_rng(1).normal(0, 1, (24, 32, 6)).astype(np.float32)
    np.save(tmp_path / "c.npy", cube)
    assert np.array_equal(band_array(tmp_path / "c.npy", 6), cube)
    with pytest.raises(ValueError, match=r"c.npy has 6 band\(s\) but the dataset reads 4; set bands: 6"):
        band_array(tmp_path / "c.npy", 4)


def test_multiband_tiff_is_read_with_rasterio(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    data = np.random.default_rng(0).integers(0, 65535, (5, 20, 30), dtype=np.uint16)
    with rasterio.open(tmp_path / "ms.tif", "w", driver="GTiff", width=30, height=20, count=5,
                       dtype="uint16") as dst:  # fmt: skip
        dst.write(data)
    assert np.array_equal(band_array(tmp_path / "ms.tif", 5), data.transpose(1, 2, 0).astype(np.float32))


def test_band_statistics_are_exact_per_band():
    images = [scene(s)[0] for s in range(3)]
    mean, std = band_statistics(images)
    stacked = np.concatenate([i.reshape(-1, BANDS) for i in images]).astype(np.float64)
    assert np.allclose(mean, stacked.mean(0), rtol=1e-9) and np.allclose(std, stacked.std(0), rtol=1e-6)
    assert band_statistics([np.full((2, 2, 1), 7.0)]) == ((7.0,), (1.0,))  # a constant band: std 1, not 0


def test_a_band_dataset_needs_statistics_and_normalises_in_stored_units(band_data):
    ds = load_description(band_data).dataset("train")
    assert ds.bands == BANDS and ds.mean is None and ds.channels == BANDS
    with pytest.raises(ValueError, match="reads 4 band.* no mean/std.*semseg data check"):
        ds[0]
    mean, std = ds.measure_statistics()
    ds.set_statistics(mean, std)
    x, mask = ds[0]
    image, _ = ds.raw(0)
    expected = (torch.from_numpy(image).permute(2, 0, 1) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert x.shape == (BANDS, 32, 32) and torch.allclose(x, expected.float(), atol=1e-5)


def test_description_checks_band_keys(tmp_path):
    base = "classes: [a, b]\nsplits: {train: {images: i, masks: m}}\n"
    for extra, message in (("bands: 0\n", "bands: expected a positive integer"),
                           ("mean: [1, 2, 3]\nstd: [1, 1, 1]\n", "mean: only used with bands"),
                           ("bands: 2\nmean: [1, 2, 3]\nstd: [1, 1]\n", r"mean: expected 2 numbers"),
                           ("bands: 2\nmean: [1, 2]\n", "std: give mean and std together"),
                           ("bands: 2\nmean: [1, 2]\nstd: [1, 0]\n", "std must be > 0")):  # fmt: skip
        (tmp_path / "d.yaml").write_text(base + extra)
        with pytest.raises(DescriptionError, match=message):
            load_description(tmp_path / "d.yaml")


def test_transforms_resize_and_pad_float_bands_without_quantising():
    image = np.random.default_rng(0).normal(20000, 3, (10, 12, BANDS)).astype(np.float32)
    resized = resize_image(image, (20, 24))
    assert resized.dtype == np.float32 and resized.shape == (20, 24, BANDS)
    assert len(np.unique(resized[..., 0])) > 256  # not 8-bit levels
    assert abs(float(resized.mean()) - float(image.mean())) < 1.0
    mean, std = (19990.0,) * BANDS, (3.0,) * BANDS
    t = train_transforms((16, 16), scale=(0.5, 0.5), mean=mean, std=std, pixel_scale=1.0, seed=0)
    x, mask = t(image, np.zeros((10, 12), dtype=np.int64))
    padded = mask == 255  # the crop is larger than the scaled image: padding
    assert padded.any() and torch.allclose(x[:, padded], torch.zeros(()), atol=1e-4)  # padded with the mean


def test_data_check_measures_band_statistics(band_data, capsys):
    report = check_path(band_data)
    assert report.ok, report.problems
    mean, std = report.band_statistics()
    ds = load_description(band_data).dataset("train")
    expected_mean, expected_std = ds.measure_statistics()  # train only, as the class weights
    assert np.allclose(mean, expected_mean) and np.allclose(std, expected_std)
    assert report.to_dict()["bands"]["mean"] == list(mean)
    assert f"mean: [{', '.join(f'{v:.6g}' for v in mean)}]" in report.format_text()
    np.save(band_data.parent / "train" / "images" / "s0.npy", np.zeros((32, 32, 3), np.float32))
    problems = check_path(band_data).problems
    assert any("s0.npy has 3 band(s) but the dataset reads 4" in m for _, _, m in problems)


def recipe(tmp_path, description, **extra):
    text = f"""
model: {{name: unet, options: {{base_channels: 8, depth: 2}}}}
data: {{dataset: {description}, batch_size: 4, val_batch_size: 4, workers: 0, crop_size: [32, 32], scale: [1.0, 1.0]}}
optim: {{name: adamw, lr: 0.01, weight_decay: 0.0, schedule: constant}}
epochs: 10
channels_last: false
out: {tmp_path / "run"}
"""
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load_config(path, [f"{k}={v}" for k, v in extra.items()])


def test_train_predict_and_export_a_four_band_model(band_data, tmp_path, capsys):
    torch.manual_seed(0)
    result = fit(recipe(tmp_path, band_data), progress=False)
    printed = capsys.readouterr().out
    assert "measured the train split's per-band statistics" in printed
    assert result["best_mIoU"] > 0.9  # the class lives in a 40-unit step on 20,000: kept at full precision
    ckpt = tmp_path / "run" / "best.safetensors"
    meta = read_metadata(ckpt)
    train = load_description(band_data).dataset("train")
    assert meta["bands"] == BANDS and meta["model_config"]["in_channels"] == BANDS
    assert np.allclose(meta["mean"], train.measure_statistics()[0])

    metrics = evaluate_checkpoint(ckpt, str(band_data), backend="torch", progress=False)
    assert metrics["mIoU"] == pytest.approx(result["best_mIoU"], abs=1e-6)  # the trainer's and evaluate's scores agree
    folder = evaluate_checkpoint(ckpt, "folder", root=str(band_data.parent), backend="torch", progress=False)
    assert folder["mIoU"] == metrics["mIoU"]  # a plain folder is read with the checkpoint's bands and statistics
    rgb = save_weights(semseg.create_model("unet", num_classes=2, base_channels=4, depth=2), tmp_path / "rgb.safetensors",
                       classes=["ground", "field"], palette=[[0, 0, 0]] * 2, mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    with pytest.raises(ValueError, match="reads 8-bit RGB but .* gives 4 band"):
        evaluate_checkpoint(rgb, str(band_data), backend="torch", progress=False)

    predictor = Predictor.from_checkpoint(ckpt, backend="torch")
    image, mask = scene(100)
    assert predictor.bands == BANDS
    assert (predictor(image) == mask).mean() > 0.95
    np.save(tmp_path / "val.npy", image)
    summary = predict_files(predictor, [str(tmp_path / "val.npy")], tmp_path / "out", progress=False)
    assert summary["outputs"] == {str(tmp_path / "val.npy"): "val.png"} and not summary["failed"]
    assert (tmp_path / "out" / "masks" / "val.png").is_file() and not (tmp_path / "out" / "overlays").exists()
    np.save(tmp_path / "scalar.npy", np.float32(3))  # arrays that are no image: reported, the others still done
    np.save(tmp_path / "row.npy", np.zeros(5, np.float32))
    inputs = [str(tmp_path / name) for name in ("scalar.npy", "val.npy", "row.npy")]
    summary = predict_files(predictor, inputs, tmp_path / "out2", progress=False)
    assert list(summary["outputs"]) == [str(tmp_path / "val.npy")] and list(summary["failed"]) == inputs[::2]
    assert summary["failed"][inputs[0]].endswith("a .npy image must hold numbers shaped (H, W) or (H, W, bands), "
                                                 "got float32 ()")  # fmt: skip
    with pytest.raises(ValueError, match="the model takes 4 band"):
        predictor(np.zeros((32, 32, 3), dtype=np.uint8))

    onnx = tmp_path / "m.onnx"
    assert export(ckpt, onnx, fmt="onnx") < 1e-3  # parity at 4 input channels
    pytest.importorskip("onnxruntime")
    exported = Predictor.from_checkpoint(onnx, backend="onnxruntime")
    assert exported.bands == BANDS and (exported(image) == predictor(image)).mean() > 0.999


def test_in_channels_that_contradict_the_data_are_refused(band_data, tmp_path):
    config = recipe(tmp_path, band_data, **{"model.options.in_channels": 3})
    with pytest.raises(ConfigError, match="in_channels is 3 but the dataset's images have 4 channel"):
        fit(config, progress=False)


def test_folder_dataset_takes_bands_and_statistics(band_data):
    root = band_data.parent / "train"
    ds = FolderDataset(root, classes=2, bands=BANDS, mean=[1000.0] * 4, std=[5.0] * 4)
    assert ds[0][0].shape == (BANDS, 32, 32)
    rgb = root.parent / "rgb"
    (rgb / "images").mkdir(parents=True)
    (rgb / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb / "images" / "a.png")
    np.save(rgb / "images" / "a.npy", np.zeros((8, 8, 3), np.float32))  # a stray array: not an 8-bit image
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(rgb / "masks" / "a.png")
    assert [i.name for i, _ in FolderDataset(rgb, classes=2).pairs] == ["a.png"]
    with pytest.raises(ValueError, match="mean/std are for datasets read at full precision"):
        FolderDataset(rgb, classes=2, mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(ValueError, match=r"\.npy images are read at full precision only: set bands"):
        read_image(rgb / "images" / "a.npy")


def test_checkpoint_bands_must_match_the_model(tmp_path):
    model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=2, in_channels=BANDS)
    ckpt = save_weights(model, tmp_path / "m.safetensors", classes=["a", "b"], palette=[[0, 0, 0]] * 2,
                        mean=[0.0] * BANDS, std=[1.0] * BANDS, bands=BANDS)  # fmt: skip
    assert read_metadata(ckpt)["bands"] == BANDS
    wrong = save_weights(model, tmp_path / "w.safetensors", classes=["a", "b"], palette=[[0, 0, 0]] * 2,
                         mean=[0.0] * BANDS, std=[1.0] * BANDS, bands=3)  # fmt: skip
    with pytest.raises(CheckpointError, match="metadata bands must be null or the model's 4 input channels"):
        read_metadata(wrong)
    no_bands = save_weights(model, tmp_path / "n.safetensors", classes=["a", "b"], palette=[[0, 0, 0]] * 2,
                            mean=[0.0] * BANDS, std=[1.0] * BANDS)  # fmt: skip
    assert read_metadata(no_bands).get("bands") is None  # loads (init_from, export) as before
    with pytest.raises(ValueError, match="4-channel model without `bands`.* bands=4"):
        Predictor.from_checkpoint(no_bands, backend="torch")


def test_serving_refuses_a_band_model(tmp_path):
    pytest.importorskip("fastapi")
    from semseg.serving.app import ServeSettings, create_app

    model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=2, in_channels=BANDS)
    ckpt = save_weights(model, tmp_path / "m.safetensors", classes=["a", "b"], palette=[[0, 0, 0]] * 2,
                        mean=[0.0] * BANDS, std=[1.0] * BANDS, bands=BANDS)  # fmt: skip
    predictor = Predictor.from_checkpoint(ckpt, backend="torch")
    with pytest.raises(ValueError, match="reads 4 band.*Use `semseg predict`"):
        create_app(predictor, ServeSettings(checkpoint=str(ckpt)))


def test_a_band_geotiff_streams_as_it_predicts_in_memory(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from semseg.inference.raster import predict_raster

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(BANDS, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 3, 3, padding=1)).eval()  # fmt: skip
    predictor = Predictor(model, classes=["a", "b", "c"], palette=[(0, 0, 0)] * 3, mean=(1000.0,) * BANDS,
                          std=(300.0,) * BANDS, bands=BANDS, tile=64)  # fmt: skip
    data = np.random.default_rng(0).normal(1000, 300, (BANDS, 150, 170)).astype(np.float32)
    with rasterio.open(tmp_path / "in.tif", "w", driver="GTiff", width=170, height=150, count=BANDS,
                       dtype="float32") as dst:  # fmt: skip
        dst.write(data)
    predict_raster(predictor, tmp_path / "in.tif", tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        streamed = out.read(1)
    assert np.array_equal(streamed, predictor(data.transpose(1, 2, 0)))
    assert len(np.unique(streamed)) > 1
    with rasterio.open(tmp_path / "three.tif", "w", driver="GTiff", width=170, height=150, count=3,
                       dtype="float32") as dst:  # fmt: skip
        dst.write(data[:3])
    from semseg.inference.raster import RasterError

    with pytest.raises(RasterError, match=r"has 3 band\(s\) but the model reads 4"):
        predict_raster(predictor, tmp_path / "three.tif", tmp_path / "o3.tif")



def test_nodata_pixels_are_ignored_in_training_labels_and_statistics(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = np.random.default_rng(0).normal(500, 10, (2, 24, 30)).astype(np.float32)
    image[:, :, :10] = -9999.0  # the raster's nodata value: a left strip with no data
    with rasterio.open(tmp_path / "images" / "a.tif", "w", driver="GTiff", width=30, height=24, count=2,
                       dtype="float32", nodata=-9999.0) as dst:  # fmt: skip
        dst.write(image)
    cube = np.random.default_rng(1).normal(500, 10, (24, 30, 2)).astype(np.float32)
    cube[5, 7] = np.nan  # a NaN sample in one band of a .npy: that pixel has no data
    np.save(tmp_path / "images" / "b.npy", cube)
    for name in ("a", "b"):
        Image.fromarray(np.ones((24, 30), dtype=np.uint8)).save(tmp_path / "masks" / f"{name}.png")
    ds = FolderDataset(tmp_path, classes=2, bands=2)
    mean, std = ds.measure_statistics()
    kept = np.concatenate([image[:, :, 10:].reshape(2, -1).T, np.delete(cube.reshape(-1, 2), 5 * 30 + 7, axis=0)]).astype(np.float64)
    assert np.allclose(mean, kept.mean(0), rtol=1e-9) and np.allclose(std, kept.std(0), rtol=1e-6)
    ds.set_statistics(mean, std)
    pixels, mask = ds.raw(0)
    assert (mask[:, :10] == 255).all() and (mask[:, 10:] == 1).all()
    assert np.allclose(pixels[:, :10], mean)  # filled with the mean: zero once normalised
    pixels, mask = ds.raw(1)
    assert mask[5, 7] == 255 and (mask == 255).sum() == 1 and np.isfinite(pixels).all()
    assert np.allclose(check_path_report_mean(tmp_path), mean)


def check_path_report_mean(root):
    """The per-band mean ``semseg data check`` reports for a described ``root`` with bands: 2."""
    (root / "d.yaml").write_text("classes: [a, b]\nbands: 2\nsplits: {train: {images: images, masks: masks}}\n")
    return check_path(root / "d.yaml").band_statistics()[0]


def test_sixteen_bit_rgb_png_and_plain_multiband_tiff_reach_the_predictor_intact(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    rgb16 = np.random.default_rng(0).integers(0, 65535, (20, 24, 3), dtype=np.uint16)
    with rasterio.open(tmp_path / "c.png", "w", driver="PNG", width=24, height=20, count=3, dtype="uint16") as dst:
        dst.write(rgb16.transpose(2, 0, 1))
    assert np.array_equal(band_array(tmp_path / "c.png", 3), rgb16.astype(np.float32))  # PIL would give 8 bits
    cube = np.random.default_rng(1).normal(0, 1, (5, 20, 24)).astype(np.float32)
    with rasterio.open(tmp_path / "m.tif", "w", driver="GTiff", width=24, height=20, count=5, dtype="float32") as dst:
        dst.write(cube)
    predictor = Predictor(torch.nn.Conv2d(5, 2, 1), classes=["a", "b"], palette=[(0, 0, 0)] * 2, mean=(0.0,) * 5,
                          std=(1.0,) * 5, bands=5)  # fmt: skip
    assert np.array_equal(predictor.read(tmp_path / "m.tif"), cube.transpose(1, 2, 0))  # PIL cannot open it
    with pytest.raises(ValueError, match="it is 24x20 = 480 pixels"):
        predictor.read(tmp_path / "m.tif", max_pixels=100)


def test_non_finite_inputs_are_fed_as_the_mean(tmp_path):
    predictor = Predictor(torch.nn.Identity(), classes=["a", "b"], palette=[(0, 0, 0)] * 2, mean=(10.0, 20.0),
                          std=(1.0, 1.0), bands=2)  # fmt: skip
    image = np.ones((4, 5, 2), dtype=np.float32)
    image[1, 2] = [np.nan, 3.0]
    read = predictor.read(image)
    assert read[1, 2].tolist() == [10.0, 20.0] and read[0, 0].tolist() == [1.0, 1.0] and np.isnan(image[1, 2, 0])


def test_colour_jitter_is_refused_for_bands(band_data, tmp_path):
    with pytest.raises(ConfigError, match="color_jitter .* no meaning for bands"):
        fit(recipe(tmp_path, band_data, **{"data.color_jitter": "true"}), progress=False)
