"""Training from rasters too large to cut into tiles first: windows read straight from image/label rasters.

A :class:`RasterWindows` dataset holds pairs of (image raster, label raster) of any size and gives
windows of ``size`` pixels read with rasterio (only the window is read, never the raster), in one
of two modes:

* ``"random"`` -- ``per_epoch`` windows at random places (torchgeo's ``RandomGeoSampler``), optionally
  class-balanced: a class is drawn uniformly among those present, then a place holding it, so rare
  classes are seen as often as common ones. Places come from ``(seed, index)`` only, and the trainer
  reseeds the dataset every epoch as it does the transforms, so a run is reproducible per seed and a
  resumed run draws the windows the uninterrupted one would have.
* ``"grid"`` -- every raster covered by windows edge to edge (``GridGeoSampler``), each pixel once:
  the validation split.

Windows take the pairs' classes and mask coding from a :class:`~semseg.data.base.MaskDecoder`, the
images' bands at full precision (``bands``) or as 8-bit RGB, and no-data pixels (the image's nodata,
alpha or mask) as ``ignore_index``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from semseg.data.base import BandMoments, DataError, MaskDecoder, PairedDataset, Transform

MODES = ("random", "grid")
COARSE = 16  # class-balanced sampling finds classes on labels read at 1/COARSE of their size per side


class RasterWindows(PairedDataset):
    """Windows of ``size`` ``(H, W)`` from ``pairs`` of (image raster, label raster); see the module docstring."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        decoder: MaskDecoder,
        *,
        classes: Sequence[str],
        size: Sequence[int],
        mode: str = "random",
        per_epoch: int = 1000,
        class_balanced: bool = False,
        seed: int = 0,
        palette: Sequence[tuple[int, int, int]] | None = None,
        transform: Transform | None = None,
        bands: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(pairs, decoder, classes=classes, palette=palette, transform=transform, bands=bands, mean=mean,
                         std=std)  # fmt: skip
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"window size must be [H, W] with both >= 32, got {list(size)}")
        if per_epoch < 1:
            raise ValueError(f"per_epoch must be >= 1, got {per_epoch}")
        if decoder.is_colour:
            raise ValueError("label rasters hold class values, not colours: use an index mask coding")
        self.size, self.mode, self.per_epoch, self.class_balanced = (int(size[0]), int(size[1])), mode, per_epoch, class_balanced
        self.seed = seed
        self.shapes = [self._check_pair(image, label) for image, label in self.pairs]
        self.grid = [(p, top, left) for p, (h, w) in enumerate(self.shapes)
                     for top in _starts(h, self.size[0]) for left in _starts(w, self.size[1])]  # fmt: skip
        self._places = _class_places(self.pairs, decoder, len(self.classes)) if class_balanced else None

    def __len__(self) -> int:
        return self.per_epoch if self.mode == "random" else len(self.grid)

    def reseed(self, seed: int) -> None:
        """Draw another set of random windows (the trainer calls this every epoch with the transforms' seed)."""
        self.seed = seed

    def cache_decoded(self, max_bytes: int) -> int:
        raise ValueError("raster windows are read from the files each time (the rasters need not fit in memory); "
                         "set data.cache: false")  # fmt: skip

    def measure_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and std over the grid's windows (every pixel once, a window in memory at a time),
        in the units :meth:`set_statistics` takes."""
        moments = BandMoments()
        for p, top, left in self.grid:
            image, valid = self._read_image(p, top, left)
            moments.add(image, valid)
        mean, std = moments.result()
        return tuple(m / self.pixel_scale for m in mean), tuple(v / self.pixel_scale for v in std)

    def window(self, index: int) -> tuple[int, int, int]:
        """``(pair, top, left)`` of window ``index``: a grid cell, or a place drawn from ``(seed, index)``."""
        if self.mode == "grid":
            return self.grid[index]
        rng = np.random.default_rng([self.seed, index])
        if self._places is not None:
            present = [c for c, places in enumerate(self._places) if len(places)]
            places = self._places[present[int(rng.integers(len(present)))]]
            p, row, col = places[int(rng.integers(len(places)))]
            h, w = self.shapes[p]
            y = min(h - 1, row * COARSE + int(rng.integers(COARSE)))  # a pixel of the coarse cell holding the class
            x = min(w - 1, col * COARSE + int(rng.integers(COARSE)))
            top = min(max(0, y - self.size[0] // 2), max(0, h - self.size[0]))
            left = min(max(0, x - self.size[1] // 2), max(0, w - self.size[1]))
            return p, top, left
        # Each raster in proportion to its area, then a uniform place in it.
        areas = np.array([h * w for h, w in self.shapes], dtype=np.float64)
        p = int(rng.choice(len(areas), p=areas / areas.sum()))
        h, w = self.shapes[p]
        return p, int(rng.integers(max(1, h - self.size[0] + 1))), int(rng.integers(max(1, w - self.size[1] + 1)))

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``index``: the image (uint8 RGB, or float32 bands) and its int64 class mask, no-data ignored."""
        p, top, left = self.window(index)
        image, valid = self._read_image(p, top, left)
        label_path = self.pairs[p][1]
        h, w = self.shapes[p]
        rows, cols = min(self.size[0], h - top), min(self.size[1], w - left)  # the part inside the raster
        stored = _read_window(label_path, top, left, rows, cols, what="label")[0][..., 0].astype(np.int64)
        mask = np.full(self.size, self.ignore_index, dtype=np.int64)  # past the edge: ignored, never decoded
        mask[:rows, :cols] = self.decoder(stored, label_path)
        if valid is not None:
            mask[~valid] = self.ignore_index
            image[~valid] = 0 if self.mean is None or self.bands is None else np.asarray(self.mean, np.float32)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(index)
        return self.transform(image, mask)

    def _read_image(self, p: int, top: int, left: int) -> tuple[np.ndarray, np.ndarray | None]:
        path = self.pairs[p][0]
        pixels, valid = _read_window(path, top, left, *self.size, what="image")
        if self.bands is None:
            if pixels.shape[2] not in (1, 3, 4) or pixels.dtype != np.uint8:
                raise DataError(f"{path}: {pixels.shape[2]} {pixels.dtype} band(s) are not 8-bit RGB; describe the "
                                f"data with bands: {pixels.shape[2]} to read them at full precision")  # fmt: skip
            pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]
            return np.ascontiguousarray(pixels), valid
        if pixels.shape[2] != self.bands:
            raise DataError(f"{path} has {pixels.shape[2]} band(s) but the dataset reads {self.bands}")
        pixels = pixels.astype(np.float32)
        finite = np.isfinite(pixels).all(axis=2)
        if not finite.all():
            valid = finite if valid is None else valid & finite
        return pixels, valid

    def _check_pair(self, image: Path, label: Path) -> tuple[int, int]:
        """The ``(height, width)`` both rasters share; DataError when they differ or cannot be opened."""
        rasterio = _rasterio()
        shapes = []
        for path in (image, label):
            try:
                with _quiet(rasterio), rasterio.open(path) as src:
                    shapes.append((src.height, src.width, src.count))
            except rasterio.errors.RasterioIOError as exc:
                raise DataError(f"{path}: cannot open this raster ({exc})") from None
        (h, w, _), (lh, lw, lcount) = shapes
        if (h, w) != (lh, lw):
            raise DataError(f"image raster {image} is {w}x{h} but label raster {label} is {lw}x{lh} (WxH); they "
                            "must match pixel for pixel")  # fmt: skip
        if lcount != 1:
            raise DataError(f"label raster {label} has {lcount} bands; it must have one (the class values)")
        return h, w


def _starts(size: int, window: int) -> list[int]:
    """Window starts covering ``0..size`` edge to edge; the last window reaches past the end (padding, no
    data), so that no pixel is in two windows."""
    return list(range(0, size, window))


def _rasterio() -> ModuleType:
    try:
        import rasterio
    except ImportError:
        raise ImportError("raster windows are read with rasterio: pip install 'semseg[geo]'") from None
    return rasterio


@contextmanager
def _quiet(rasterio: ModuleType) -> Iterator[None]:
    """No warnings for plain (not georeferenced) TIFFs, nor rasterio's own deprecation notes on boundless reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        yield


def _read_window(path: Path, top: int, left: int, rows: int, cols: int, *,
                 what: str) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """``(rows, cols, bands)`` of ``path`` at ``(top, left)``, zero-padded past the raster's edge, and where
    it holds data (``(rows, cols)`` bool: not past the edge nor marked no data), ``None`` for everywhere."""
    rasterio = _rasterio()
    from rasterio.windows import Window

    with _quiet(rasterio):
        try:
            with rasterio.open(path) as src:
                window = Window(left, top, cols, rows)
                data = src.read(window=window, boundless=True, fill_value=0).transpose(1, 2, 0)
                inside = top + rows <= src.height and left + cols <= src.width
                all_valid = all(rasterio.enums.MaskFlags.all_valid in flags for flags in src.mask_flag_enums)
                if all_valid and inside:
                    return data, None
                valid = np.zeros((rows, cols), dtype=bool)
                h, w = min(rows, src.height - top), min(cols, src.width - left)
                valid[:h, :w] = src.dataset_mask(window=Window(left, top, w, h)) > 0
                return data, valid
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"{path}: cannot read this {what} raster at rows {top}-{top + rows - 1} ({exc})") from None


def _class_places(pairs: Sequence[tuple[Path, Path]], decoder: MaskDecoder, num_classes: int) -> list[np.ndarray]:
    """Per class, the ``(pair, row, col)`` coarse cells (labels read at 1/COARSE per side, nearest) holding it."""
    rasterio = _rasterio()
    from rasterio.enums import Resampling

    found: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for p, (_, label) in enumerate(pairs):
        with _quiet(rasterio), rasterio.open(label) as src:
                shape = (max(1, src.height // COARSE), max(1, src.width // COARSE))
                stored = src.read(1, out_shape=shape, resampling=Resampling.nearest).astype(np.int64)
        labels = decoder(stored, label)
        for c in range(num_classes):
            rows, cols = np.nonzero(labels == c)
            if len(rows):
                found[c].append(np.stack([np.full_like(rows, p), rows, cols], axis=1))
    return [np.concatenate(cells) if cells else np.zeros((0, 3), dtype=np.int64) for cells in found]
