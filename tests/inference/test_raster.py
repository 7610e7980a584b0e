import json
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import semseg
from semseg.cli import main
from semseg.engine.checkpoint import save_weights
from semseg.inference import Predictor
from semseg.inference.raster import RasterError, RasterWindows, is_streamed, predict_raster

rasterio = pytest.importorskip("rasterio")
from rasterio.crs import CRS  # noqa: E402
from rasterio.enums import ColorInterp, Compression  # noqa: E402
from rasterio.transform import Affine  # noqa: E402

CLASSES = ["a", "b", "c"]
PALETTE = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
TRANSFORM = Affine(0.5, 0, 500_000.0, 0, -0.5, 4_600_000.0)  # UTM metres, 0.5 m pixels
CRS_UTM = CRS.from_epsg(32633)


def context_predictor(**options) -> Predictor:
    """Two stacked 3x3 convolutions: each output sees a 5x5 neighbourhood, so tiling and blending matter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    return Predictor(model, classes=CLASSES, palette=PALETTE, mean=(0.5,) * 3, std=(0.25,) * 3, **options)


def random_rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_tif(path, bands, **profile):
    """``bands``: (count, H, W); a georeferenced GeoTIFF unless ``crs``/``transform`` say otherwise."""
    count, h, w = bands.shape
    options = {"crs": CRS_UTM, "transform": TRANSFORM, **profile}
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=count, dtype=bands.dtype, **options) as dst:
        dst.write(bands)
    return path


def read_tif(path):
    with rasterio.open(path) as src:
        return src.read()


# Odd sizes needing several windows both ways, and more than one 256-row block of output.
SIZE = (301, 203)


@pytest.mark.parametrize("options", [{"tile": 64}, {"tile": 48, "overlap": 0.0}, {"max_whole_pixels": 4096}])
def test_streamed_labels_and_probabilities_equal_the_in_memory_sliding_window(tmp_path, options):
    rgb = random_rgb(*SIZE)
    source = write_tif(tmp_path / "in.tif", rgb.transpose(2, 0, 1))
    predictor = context_predictor(**options)
    labels, probs = predictor(rgb, return_probs=True)
    predict_raster(predictor, source, tmp_path / "labels.tif", probs_target=tmp_path / "probs.tif")
    streamed = read_tif(tmp_path / "labels.tif")
    assert np.array_equal(streamed[0], labels)
    written = read_tif(tmp_path / "probs.tif")
    assert np.abs(written.astype(np.float32) / 255 - probs).max() <= 0.5 / 255 + 1e-6
    # the float probabilities, read window by window from the file, before any rounding
    with rasterio.open(source) as src:
        blocks = list(predictor.probability_blocks(*SIZE, RasterWindows(src, source)))
    assert len(blocks) > 4
    assembled = np.zeros_like(probs)
    for block, top, left in blocks:
        assembled[:, top : top + block.shape[1], left : left + block.shape[2]] = block
    np.testing.assert_allclose(assembled, probs, rtol=0, atol=1e-5)


def test_output_keeps_crs_transform_and_size_tiled_and_compressed(tmp_path):
    source = write_tif(tmp_path / "in.tif", random_rgb(*SIZE).transpose(2, 0, 1))
    predict_raster(context_predictor(tile=64), source, tmp_path / "out.tif", probs_target=tmp_path / "p.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        assert (out.crs, out.transform, out.width, out.height) == (CRS_UTM, TRANSFORM, SIZE[1], SIZE[0])
        assert out.count == 1 and out.dtypes == ("uint8",) and out.nodata == 255
        assert out.profile["tiled"] and out.block_shapes == [(256, 256)]
        assert out.compression == Compression.deflate
        assert out.colorinterp == (ColorInterp.palette,) and out.colormap(1)[1] == (255, 0, 0, 255)
    with rasterio.open(tmp_path / "p.tif") as probs:
        assert (probs.crs, probs.transform, probs.count, probs.dtypes[0]) == (CRS_UTM, TRANSFORM, 3, "uint8")
        assert probs.descriptions == tuple(CLASSES) and probs.compression == Compression.deflate


@pytest.mark.parametrize("which", ["labels", "probabilities"])
def test_an_output_that_is_the_input_raster_is_refused_and_the_input_kept(tmp_path, which):
    source = write_tif(tmp_path / "in.tif", random_rgb(40, 50).transpose(2, 0, 1))
    before = source.read_bytes()
    outputs = {"target": source} if which == "labels" else {"target": tmp_path / "out.tif", "probs_target": source}
    with pytest.raises(ValueError, match=r"in\.tif is the raster being read; write the labels to another file"):
        predict_raster(context_predictor(tile=64), source, **outputs)
    assert source.read_bytes() == before


@pytest.mark.parametrize("how", ["nodata value", "alpha band"])
def test_nodata_pixels_in_are_nodata_out(tmp_path, how):
    rgb = random_rgb(*SIZE, seed=1)
    rgb[rgb.sum(axis=2) == 0] = 1  # no accidental all-zero pixels
    empty = np.zeros(SIZE, dtype=bool)
    empty[:40] = True  # a strip of no data along the top, and a hole in the middle
    empty[150:170, 90:131] = True
    if how == "nodata value":
        rgb[empty] = 0
        source = write_tif(tmp_path / "in.tif", rgb.transpose(2, 0, 1), nodata=0)
    else:
        alpha = np.where(empty, 0, 255).astype(np.uint8)[None]
        source = write_tif(tmp_path / "in.tif", np.concatenate([rgb.transpose(2, 0, 1), alpha]), photometric="RGB",
                           alpha="YES")  # fmt: skip
    labels = context_predictor(tile=64)(rgb)
    predict_raster(context_predictor(tile=64), source, tmp_path / "out.tif", probs_target=tmp_path / "p.tif")
    streamed = read_tif(tmp_path / "out.tif")
    assert np.array_equal(streamed[0] == 255, empty)
    assert np.array_equal(streamed[0][~empty], labels[~empty])
    with rasterio.open(tmp_path / "p.tif") as probs:
        assert np.array_equal(probs.dataset_mask() == 0, empty)
        assert not probs.read()[:, empty].any()


def test_nan_and_infinite_samples_of_a_float_band_model_are_nodata_out(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()

    def predictor() -> Predictor:
        return Predictor(model, classes=CLASSES, palette=PALETTE, mean=(100.0, 2.0), std=(50.0, 1.0), bands=2, tile=64)

    bands = np.random.default_rng(5).normal((100.0, 2.0), (50.0, 1.0), (*SIZE, 2)).astype(np.float32)
    empty = np.zeros(SIZE, dtype=bool)
    empty[10:30, 20:90] = True
    bands[10:30, 20:90, 1] = np.nan  # one band missing is enough to make the pixel no data
    bands[200:205, 100:150, 0] = np.inf
    empty[200:205, 100:150] = True
    source = write_tif(tmp_path / "in.tif", bands.transpose(2, 0, 1))  # float32, no nodata value or mask
    predict_raster(predictor(), source, tmp_path / "out.tif", probs_target=tmp_path / "p.tif")
    streamed = read_tif(tmp_path / "out.tif")[0]
    filled = np.where(empty[..., None], np.float32([100.0, 2.0]), bands)
    assert np.array_equal(streamed == 255, empty)
    assert np.array_equal(streamed[~empty], predictor()(filled)[~empty])
    with rasterio.open(tmp_path / "p.tif") as probs:
        assert np.array_equal(probs.dataset_mask() == 0, empty)


def test_sixteen_bit_and_grey_rasters_are_read_as_image_files_are(tmp_path):
    rgb = random_rgb(*SIZE, seed=2)
    predictor = context_predictor(tile=64)
    source = write_tif(tmp_path / "16.tif", rgb.transpose(2, 0, 1).astype(np.uint16) * 257)  # x257: full range
    predict_raster(predictor, source, tmp_path / "16-out.tif")
    assert np.array_equal(read_tif(tmp_path / "16-out.tif")[0], predictor(rgb))
    grey = rgb[..., 0]
    source = write_tif(tmp_path / "grey.tif", grey[None].astype(np.uint16) * 257)
    predict_raster(predictor, source, tmp_path / "grey-out.tif")
    assert np.array_equal(read_tif(tmp_path / "grey-out.tif")[0], predictor(np.repeat(grey[..., None], 3, 2)))


def test_twelve_bit_data_warns_once_per_raster(tmp_path):
    source = write_tif(tmp_path / "12.tif", (random_rgb(*SIZE).transpose(2, 0, 1).astype(np.uint16) * 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_raster(context_predictor(tile=64), source, tmp_path / "out.tif")
    dark = [w for w in caught if "nearly black" in str(w.message)]
    assert len(dark) == 1 and "12.tif" in str(dark[0].message)


def test_unusable_rasters_are_explained(tmp_path):
    two = write_tif(tmp_path / "two.tif", np.zeros((2, 40, 40), dtype=np.uint8))
    with pytest.raises(RasterError, match=r"two.tif has 2 band\(s\).*gdal_translate -b 1 -b 2 -b 3"):
        predict_raster(context_predictor(), two, tmp_path / "out.tif")
    floats = write_tif(tmp_path / "float.tif", np.zeros((3, 40, 40), dtype=np.float32))
    with pytest.raises(RasterError, match="float.tif has float32 samples.*gdal_translate -ot Byte"):
        predict_raster(context_predictor(), floats, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()  # nothing half-written left behind


def test_which_tiffs_are_streamed(tmp_path):
    rgb = random_rgb(40, 50)
    geo = write_tif(tmp_path / "geo.tif", rgb.transpose(2, 0, 1))
    Image.fromarray(rgb).save(tmp_path / "plain.tif")
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    assert is_streamed(geo, max_pixels=10**8)
    assert not is_streamed(tmp_path / "plain.tif", max_pixels=10**8)
    assert is_streamed(tmp_path / "plain.tif", max_pixels=1000)  # too large to decode whole: streamed
    assert not is_streamed(tmp_path / "plain.png", max_pixels=1000)  # other formats never are


def test_without_rasterio_geotiffs_fail_with_the_install_hint(tmp_path, monkeypatch):
    rgb = random_rgb(40, 50)
    geo = write_tif(tmp_path / "geo.tif", rgb.transpose(2, 0, 1))
    Image.fromarray(rgb).save(tmp_path / "plain.tif")
    monkeypatch.setitem(sys.modules, "rasterio", None)  # import rasterio now raises ImportError
    with pytest.raises(ImportError, match=r"geo.tif is a GeoTIFF.*pip install 'semseg\[geo\]'"):
        is_streamed(geo, max_pixels=10**8)
    with pytest.raises(ImportError, match=r"pip install 'semseg\[geo\]'"):
        predict_raster(context_predictor(), geo, tmp_path / "out.tif")
    assert not is_streamed(tmp_path / "plain.tif", max_pixels=10**8)  # plain TIFFs go on as images


@pytest.fixture
def checkpoint(tmp_path):
    model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=2).eval()
    return save_weights(model, tmp_path / "m.safetensors", classes=["background", "thing"],
                        palette=[[0, 0, 0], [255, 0, 0]], mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip


def test_predict_cli_writes_a_geotiff_for_a_geotiff(checkpoint, tmp_path, monkeypatch):
    rgb = random_rgb(70, 90, seed=3)
    write_tif(tmp_path / "scene.tif", rgb.transpose(2, 0, 1))
    Image.fromarray(rgb).save(tmp_path / "photo.tif")
    out = tmp_path / "out"
    args = ["predict", str(checkpoint), str(tmp_path / "scene.tif"), str(tmp_path / "photo.tif"), "--out", str(out),
            "--quiet", "--tile", "32", "--probs", "--backend", "torch"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] == {str(tmp_path / "scene.tif"): "scene.tif", str(tmp_path / "photo.tif"): "photo.png"}
    with rasterio.open(out / "masks" / "scene.tif") as mask:
        assert (mask.crs, mask.transform, mask.shape) == (CRS_UTM, TRANSFORM, (70, 90))
        labels = mask.read(1)
    expected = Predictor.from_checkpoint(checkpoint, backend="torch", tile=32)(rgb)
    assert np.array_equal(labels, expected)
    assert (out / "probs" / "scene.tif").is_file() and not (out / "overlays" / "scene.png").exists()
    assert (out / "masks" / "photo.png").is_file()  # a plain TIFF is an image as before
    monkeypatch.setitem(sys.modules, "rasterio", None)
    assert main(args[:3] + ["--out", str(tmp_path / "o2"), "--quiet"]) == 1
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert "pip install 'semseg[geo]'" in summary["failed"][str(tmp_path / "scene.tif")]


@pytest.mark.parametrize("folder", ["masks", "probs"])
def test_a_geotiff_whose_output_path_is_a_folder_is_skipped_and_the_rest_written(checkpoint, tmp_path, folder):
    write_tif(tmp_path / "scene.tif", random_rgb(40, 50).transpose(2, 0, 1))
    Image.fromarray(random_rgb(30, 40, seed=1)).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    (out / folder / "scene.tif").mkdir(parents=True)  # used to stop the whole run
    args = ["predict", str(checkpoint), str(tmp_path / "scene.tif"), str(tmp_path / "photo.png"), "--out", str(out),
            "--quiet", "--tile", "32", "--probs", "--backend", "torch"]  # fmt: skip
    assert main(args) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] == {str(tmp_path / "photo.png"): "photo.png"}
    assert summary["failed"] == {str(tmp_path / "scene.tif"): f"cannot write its output {out / folder / 'scene.tif'}: "
                                 "it is a folder; move that away or choose another --out"}  # fmt: skip
    assert (out / folder / "scene.tif").is_dir() and not list((out / folder / "scene.tif").iterdir())
    assert not (out / "masks" / "scene.tif").is_file() and not (out / "probs" / "scene.tif").is_file()  # nothing of it


@pytest.mark.parametrize("taken", ["masks/scene.tif", "probs/scene.tif", "masks/.scene.part0.tif"])
def test_a_raster_shared_by_processes_whose_output_is_a_folder_fails_on_every_rank(checkpoint, tmp_path, monkeypatch,
                                                                                  taken):  # fmt: skip
    from semseg.inference import predict

    write_tif(tmp_path / "scene.tif", random_rgb(40, 50).transpose(2, 0, 1))
    out = tmp_path / "out"
    (out / taken).mkdir(parents=True)  # the merged labels or probabilities, or this rank's own part
    gathered = []

    def all_gather_object(outcomes, mine):  # rank 0 of 2, the other rank having succeeded
        gathered.append(mine)
        outcomes[:] = [mine, (None, False)]

    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    predictor = Predictor.from_checkpoint(checkpoint, backend="torch", tile=32)
    parts, why = predict._predict_raster_part(predictor, tmp_path / "scene.tif", out, "scene", probs=True, rank=0,
                                              world_size=2)  # fmt: skip
    assert why == f"cannot write its output {out / taken}: it is a folder; move that away or choose another --out"
    assert gathered == [(why, False)]  # reported to the other processes, not raised on this one alone
    assert (out / taken).is_dir() and not [p for p in out.rglob(".scene.part*") if p.is_file()]
    if taken.endswith("part0.tif"):  # found while writing: the parts were planned, none is left
        assert parts[0] == (out / "masks" / ".scene.part0.tif", out / "probs" / ".scene.part0.tif")
    else:  # found before anything was planned or written
        assert parts == []
