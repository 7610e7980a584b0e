"""GeoTIFFs in and out: label maps of rasters larger than memory, predicted a window at a time.

A raster is read in the Predictor's own sliding windows (:meth:`Predictor.probability_blocks`, the
code that tiles in-memory images, so the labels are the same) and its labels are written as they are
finished to a tiled, deflate-compressed GeoTIFF with the input's CRS, transform and size. What is held
is the sums carried between bands of windows (``(classes + 1) x rows x width`` floats, fewer rows than
the tile), one window and a few rows of output blocks: memory grows with the width and the tile,
never the height.

rasterio (GDAL's Python binding, which geospatial users already have) is optional:
``pip install 'semseg[geo]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from semseg.data.base import rgb_array
from semseg.inference.predictor import ImageTooLarge, Predictor, open_image
from semseg.paths import check_not_folders

GEO_HINT = "reading and writing GeoTIFFs needs rasterio: pip install 'semseg[geo]'"
RASTER_SUFFIXES = (".tif", ".tiff")
BLOCK = 256  # output tile side: GDAL's own default for tiled GeoTIFFs
# GDAL's block cache defaults to 5% of the machine's memory (6 GB of 128 GB), and the blocks read stay in
# it up to that size: all 1.2 GB of a 20,000 x 20,000 RGB raster. The windows reread little of it.
CACHE_BYTES = 64 * 2**20
# TIFF tags that make a file a GeoTIFF (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory).
_GEOTIFF_TAGS = (33550, 33922, 34264, 34735)


class RasterError(ValueError):
    """A raster that cannot be segmented as it is; the message names the file and the fix."""


def import_rasterio() -> ModuleType:
    """rasterio, imported only when a GeoTIFF is given (it is an optional dependency)."""
    try:
        import rasterio
    except ImportError:
        raise ImportError(GEO_HINT) from None
    return rasterio


def is_streamed(path: Path, max_pixels: int) -> bool:
    """Whether ``semseg predict`` streams ``path`` to a GeoTIFF: a TIFF that is georeferenced (a CRS,
    a transform or ground control points) or declares more than ``max_pixels`` pixels.

    Without rasterio such a file raises ImportError (found from its TIFF tags), rather than losing its
    georeferencing in a PNG or being refused; other files, and files GDAL cannot open, are not streamed.
    """
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return False
    try:
        rasterio = import_rasterio()
    except ImportError:
        if _needs_rasterio(path, max_pixels):
            raise ImportError(f"{path} is a GeoTIFF or larger than --max-pixels: {GEO_HINT}") from None
        return False
    try:
        with _gdal_env(rasterio), rasterio.open(path) as src:
            georeferenced = src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])
            return georeferenced or src.width * src.height > max_pixels
    except rasterio.errors.RasterioIOError:
        return False


def _needs_rasterio(path: Path, max_pixels: int) -> bool:
    """A TIFF with GeoTIFF tags or too large to decode whole, judged from its header by PIL."""
    try:
        with open_image(path, max_pixels=max_pixels) as image:
            return any(tag in getattr(image, "tag_v2", {}) for tag in _GEOTIFF_TAGS)
    except ImageTooLarge:
        return True
    except (OSError, ValueError, SyntaxError):  # unreadable: the image path reports it
        return False


def predict_raster(predictor: Predictor, source: str | Path, target: str | Path, *,
                   probs_target: str | Path | None = None, rows: tuple[int, int] | None = None) -> None:  # fmt: skip
    """Write the label map of raster ``source`` to GeoTIFF ``target`` (and its class probabilities to
    ``probs_target``), reading and writing a window at a time.

    Labels are uint8 with nodata 255 (uint16 and 65535 for more than 255 classes) and carry the
    checkpoint's palette as a colour table. Probabilities are one uint8 band per class, ``p * 255``
    rounded: GDAL has no float16 before 3.11, float32 would be 4x the size, and 1/255 is resolution
    enough to threshold or show them. Input nodata (its nodata value, alpha band or mask) becomes
    nodata in both: 255 in the labels, the internal mask of the probabilities.

    With ``rows`` (``first`` and ``end`` of :meth:`Predictor.row_bands`' bands), only those rows are
    segmented, into plain TIFF parts holding just them (no georeferencing, no-data not yet applied),
    which :func:`merge_raster_parts` puts together: how several processes share one raster.
    """
    rasterio = import_rasterio()
    source, target = Path(source), Path(target)
    probs_target = None if probs_target is None else Path(probs_target)
    for output in (target, probs_target):  # checked first: the clean-up of a failure would delete the input too
        if output is not None and output.resolve() == source.resolve():
            raise ValueError(f"{output} is the raster being read; write the labels to another file")
    check_not_folders(target, probs_target)
    try:
        _stream(rasterio, predictor, source, target, probs_target, rows)
    except BaseException:  # a half-written raster would pass for a result
        for path in (target, probs_target):
            if path is not None:
                path.unlink(missing_ok=True)
        raise


def _stream(rasterio: ModuleType, predictor: Predictor, source: Path, target: Path, probs_target: Path | None,
            rows: tuple[int, int] | None) -> None:  # fmt: skip
    with _gdal_env(rasterio), rasterio.open(source) as src, ExitStack() as outputs:
        windows = RasterWindows(src, source, bands=predictor.bands, fill=predictor.mean.flatten().tolist())
        if rows is None:
            labels, probs = _open_outputs(rasterio, src, predictor, target, probs_target, outputs)
            valid = _validity(rasterio, src, predictor.bands)
        else:
            labels, probs = _open_parts(rasterio, src, predictor, target, probs_target, rows[1] - rows[0], outputs)
            valid = None  # applied when the parts are merged
        writer = _RowWriter([d for d in (labels, probs) if d is not None], valid)
        for block, top, left in predictor.probability_blocks(src.height, src.width, windows, rows=rows):
            rows, cols = block.shape[1:]
            if left == 0:
                band = [np.empty((1, rows, src.width), labels.dtypes[0])]
                band += [np.empty((len(predictor.classes), rows, src.width), np.uint8)] if probs else []
            band[0][0, :, left : left + cols] = block.argmax(0)
            if probs:
                band[1][:, :, left : left + cols] = np.rint(block * 255)
            if left + cols == src.width:
                writer.add(band)
        writer.close()
    windows.warn_if_dark()


class RasterWindows:
    """Reads windows of an open rasterio dataset as ``(rows, cols, 3)`` uint8 RGB, as image files are read:
    one grey band repeated, 16-bit values scaled by :func:`~semseg.data.base.rgb_array`. For a model of
    ``bands`` full-precision bands: the raster's first ``bands`` bands as float32, any sample type, with
    no-data pixels (nodata, alpha, mask; NaN or infinite samples) set to ``fill``, the model's mean, as
    training sees them (the outputs mark them as no data)."""

    def __init__(self, dataset: Any, path: Path, *, bands: int | None = None,
                 fill: Sequence[float] | None = None) -> None:  # fmt: skip
        self.dataset, self.path, self.full_precision = dataset, path, bands is not None
        self.fill = None if fill is None else np.asarray(fill, dtype=np.float32)
        self.masked = not _all_valid(import_rasterio(), dataset)  # has a nodata value, alpha band or mask
        self.bands = _rgb_bands(dataset, path) if bands is None else _model_bands(dataset, path, bands)
        self.windows, self.dark = 0, []  # 16-bit windows read, and the warnings of those nearly black

    def __call__(self, top: int, left: int, rows: int, cols: int) -> np.ndarray:
        from rasterio.errors import RasterioIOError
        from rasterio.windows import Window

        try:
            data = self.dataset.read(self.bands, window=Window(left, top, cols, rows))
        except RasterioIOError as exc:
            raise RasterError(f"cannot read raster {self.path} at rows {top}-{top + rows - 1}: {exc}") from None
        if self.full_precision:
            pixels = np.ascontiguousarray(data.transpose(1, 2, 0), dtype=np.float32)
            if self.fill is not None:
                valid = np.isfinite(pixels).all(axis=2)
                if self.masked:
                    valid &= self.dataset.dataset_mask(window=Window(left, top, cols, rows)) > 0
                pixels[~valid] = self.fill
            return pixels
        pixels = np.ascontiguousarray(data.transpose(1, 2, 0))
        if pixels.dtype == np.uint16:
            pixels = self._eight_bit(pixels)
        return pixels if pixels.shape[2] == 3 else np.repeat(pixels, 3, axis=2)

    def _eight_bit(self, pixels: np.ndarray) -> np.ndarray:
        """16-bit ``(rows, cols, bands)`` to 8 bits, the bands side by side as one grey image for rgb_array."""
        rows, cols, bands = pixels.shape
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grey = rgb_array(Image.fromarray(pixels.reshape(rows, cols * bands)), str(self.path))[..., 0]
        self.windows += 1
        self.dark += [w.message for w in caught[:1]]
        return grey.reshape(rows, cols, bands)

    def warn_if_dark(self) -> None:
        """rgb_array's nearly-black warning, once, if it held for every window (the raster as a whole)."""
        if self.dark and len(self.dark) == self.windows:
            warnings.warn(self.dark[0], stacklevel=2)


def _rgb_bands(dataset: Any, path: Path) -> list[int]:
    """The band numbers read as the model's RGB input: ``[1]`` (grey, repeated) or ``[1, 2, 3]``
    (RGB, or RGBA whose 4th band is alpha); RasterError for other bands or sample types."""
    from rasterio.enums import ColorInterp

    interp = dataset.colorinterp
    if dataset.count == 1 and interp[0] != ColorInterp.palette:
        bands = [1]
    elif dataset.count == 3 or dataset.count == 4 and interp[3] == ColorInterp.alpha:
        bands = [1, 2, 3]
    else:
        names = ", ".join(i.name for i in interp)
        raise RasterError(f"{path} has {dataset.count} band(s) ({names}); the model takes RGB: give 3 RGB bands "
                          "(a 4th only as alpha) or 1 grey band, e.g. gdal_translate -b 1 -b 2 -b 3 in.tif rgb.tif "
                          "(a palette raster: gdal_translate -expand rgb in.tif rgb.tif)")  # fmt: skip
    types = sorted({dataset.dtypes[b - 1] for b in bands})
    if types not in (["uint8"], ["uint16"]):
        raise RasterError(f"{path} has {'/'.join(types)} samples; semseg reads 8- and 16-bit unsigned rasters: "
                          "convert it, e.g. gdal_translate -ot Byte -scale in.tif out.tif")  # fmt: skip
    return bands


def merge_raster_parts(predictor: Predictor, source: str | Path, parts: Sequence[tuple[Path, Path | None]],
                       target: str | Path, probs_target: str | Path | None = None) -> None:  # fmt: skip
    """Write the label (and probability) GeoTIFF of ``source`` from the row parts that
    :func:`predict_raster` with ``rows`` wrote, top to bottom, as one process writes it: the input's
    georeferencing, palette and no-data. ``BLOCK`` rows are held at a time. The parts are deleted."""
    rasterio = import_rasterio()
    source, target = Path(source), Path(target)
    probs_target = None if probs_target is None else Path(probs_target)
    try:
        with _gdal_env(rasterio), rasterio.open(source) as src, ExitStack() as outputs:
            labels, probs = _open_outputs(rasterio, src, predictor, target, probs_target, outputs)
            valid = _validity(rasterio, src, predictor.bands)
            writer = _RowWriter([d for d in (labels, probs) if d is not None], valid)
            for label_part, probs_part in parts:
                with ExitStack() as inputs:
                    opened = [inputs.enter_context(rasterio.open(p)) for p in (label_part, probs_part) if p is not None]
                    for top in range(0, opened[0].height, BLOCK):
                        window = rasterio.windows.Window(0, top, src.width, min(BLOCK, opened[0].height - top))
                        writer.add([part.read(window=window) for part in opened])
            writer.close()
    except BaseException:
        for path in (target, probs_target):
            if path is not None:
                path.unlink(missing_ok=True)
        raise
    finally:
        for pair in parts:
            for path in pair:
                if path is not None:
                    Path(path).unlink(missing_ok=True)


def _open_parts(rasterio: ModuleType, src: Any, predictor: Predictor, target: Path, probs_target: Path | None,
                height: int, stack: ExitStack) -> tuple[Any, Any]:  # fmt: skip
    """Plain tiled TIFFs for ``height`` rows of the label map (and probabilities): the parts of one process."""
    classes = len(predictor.classes)
    dtype = "uint8" if classes <= 255 else "uint16"
    profile = {"driver": "GTiff", "width": src.width, "height": height, "tiled": True, "blockxsize": BLOCK,
               "blockysize": BLOCK, "compress": "deflate", "BIGTIFF": "IF_SAFER"}  # fmt: skip
    labels = stack.enter_context(rasterio.open(target, "w", count=1, dtype=dtype, **profile))
    probs = None
    if probs_target is not None:
        probs = stack.enter_context(rasterio.open(probs_target, "w", count=classes, dtype="uint8", **profile))
    return labels, probs


def _model_bands(dataset: Any, path: Path, bands: int) -> list[int]:
    """Band numbers ``1..bands`` for a model of ``bands`` full-precision bands: the raster must have them
    (and at most an alpha band more); RasterError otherwise."""
    from rasterio.enums import ColorInterp

    extra_alpha = dataset.count == bands + 1 and dataset.colorinterp[bands] == ColorInterp.alpha
    if dataset.count != bands and not extra_alpha:
        listed = " ".join(f"-b {b}" for b in range(1, bands + 1))
        raise RasterError(f"{path} has {dataset.count} band(s) but the model reads {bands}; pick them, e.g. "
                          f"gdal_translate {listed} in.tif out.tif")  # fmt: skip
    return list(range(1, bands + 1))


def _open_outputs(rasterio: ModuleType, src: Any, predictor: Predictor, target: Path, probs_target: Path | None,
                  stack: ExitStack) -> tuple[Any, Any]:  # fmt: skip
    """The label GeoTIFF (and the probability GeoTIFF, or None), opened for writing on ``stack``."""
    classes = len(predictor.classes)
    dtype, nodata = ("uint8", 255) if classes <= 255 else ("uint16", 65535)
    labels = stack.enter_context(rasterio.open(target, "w", **_profile(src, 1, dtype, nodata)))
    if dtype == "uint8":
        labels.write_colormap(1, {i: (*colour, 255) for i, colour in enumerate(predictor.palette)})
    probs = None
    if probs_target is not None:
        probs = stack.enter_context(rasterio.open(probs_target, "w", **_profile(src, classes, "uint8", None)))
        for i, name in enumerate(predictor.classes, start=1):
            probs.set_band_description(i, name)
    if src.gcps[0]:  # georeferenced by ground control points rather than a transform
        for output in (labels, probs) if probs is not None else (labels,):
            output.gcps = src.gcps
    return labels, probs


def _profile(src: Any, count: int, dtype: str, nodata: int | None) -> dict[str, Any]:
    return {"driver": "GTiff", "width": src.width, "height": src.height, "count": count, "dtype": dtype,
            "crs": src.crs, "transform": src.transform, "nodata": nodata, "tiled": True, "blockxsize": BLOCK,
            "blockysize": BLOCK, "compress": "deflate", "BIGTIFF": "IF_SAFER"}  # fmt: skip


def _all_valid(rasterio: ModuleType, src: Any) -> bool:
    """No nodata value, alpha band or mask: every pixel is data, and no mask need be read."""
    return all(rasterio.enums.MaskFlags.all_valid in flags for flags in src.mask_flag_enums)


def _validity(rasterio: ModuleType, src: Any, bands: int | None) -> Callable[[int, int], np.ndarray] | None:
    """``valid(top, rows)``: the ``(rows, width)`` bool of where the input has data, which the outputs
    keep: GDAL's dataset mask (alpha, or not all bands nodata) and, for a model of full-precision
    ``bands``, finite samples in every float band it reads (RasterWindows fills the others with the
    mean, so their labels are no prediction). None when every pixel is data."""
    masked = not _all_valid(rasterio, src)
    floats = [] if bands is None else [b for b in range(1, bands + 1) if np.dtype(src.dtypes[b - 1]).kind == "f"]
    if not masked and not floats:
        return None

    def valid(top: int, rows: int) -> np.ndarray:
        window = rasterio.windows.Window(0, top, src.width, rows)
        ok = src.dataset_mask(window=window) > 0 if masked else np.ones((rows, src.width), dtype=bool)
        for band in floats:  # one band at a time: memory stays one band of the rows
            ok &= np.isfinite(src.read(band, window=window))
        return ok

    return valid


class _RowWriter:
    """Writes rows to output rasters top to bottom, whole rows of blocks at a time: GDAL then compresses
    each block once and holds none half-written. Pixels not ``valid`` become nodata: the raster's nodata
    value, or 0 and its mask when it has none."""

    def __init__(self, outputs: Sequence[Any], valid: Callable[[int, int], np.ndarray] | None) -> None:
        self.outputs, self.valid = outputs, valid
        self.pending: list[list[np.ndarray]] = [[] for _ in outputs]
        self.first = self.count = 0  # the first pending row, and how many are pending

    def add(self, bands: Sequence[np.ndarray]) -> None:
        """The next ``(bands, rows, width)`` rows of each output."""
        for pending, rows in zip(self.pending, bands, strict=True):
            pending.append(rows)
        self.count += bands[0].shape[1]
        if self.count >= BLOCK:
            self._write(self.count - self.count % BLOCK)

    def close(self) -> None:
        if self.count:
            self._write(self.count)

    def _write(self, n: int) -> None:
        from rasterio.windows import Window

        window = Window(0, self.first, self.outputs[0].width, n)
        valid = self.valid(self.first, n) if self.valid is not None else None
        for i, output in enumerate(self.outputs):
            rows = np.concatenate(self.pending[i], axis=1)
            data, self.pending[i] = rows[:, :n], [rows[:, n:]]
            if valid is not None:
                data[:, ~valid] = 0 if output.nodata is None else output.nodata
                if output.nodata is None:
                    output.write_mask(valid, window=window)
            output.write(data, window=window)
        self.first, self.count = self.first + n, self.count - n


def _gdal_env(rasterio: ModuleType) -> ExitStack:
    """A small GDAL block cache (CACHE_BYTES), masks inside the TIFF, no warning for plain (not georeferenced) TIFFs."""
    stack = ExitStack()
    stack.enter_context(rasterio.Env(GDAL_CACHEMAX=CACHE_BYTES, GDAL_TIFF_INTERNAL_MASK=True))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
    return stack
