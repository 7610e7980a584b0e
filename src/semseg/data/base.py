"""Shared machinery for file-backed datasets: reading images and masks, mapping mask values.

Every file-backed dataset here is a list of ``(image_path, mask_path)`` pairs plus a
:class:`MaskDecoder` that turns the stored mask values (palette indices, label ids,
RGB colours) into class indices. The per-dataset modules only build those two things:
``scan_split`` finds a split's pairs as a :class:`SplitFiles` (which ``semseg data check``
reads too) and ``decoder`` gives the decoder.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image
from torch.utils.data import Dataset

from semseg.data.transforms import eval_transforms

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ARRAY_SUFFIX = ".npy"  # NumPy arrays: images of datasets and models read at full precision (bands) only
_GDAL_SUFFIXES = (".tif", ".tiff", ".png")  # read with rasterio when it is installed: any band count, 16-bit RGB
# ImageNet statistics: what every pretrained backbone in this package expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_INDEX_MODES = ("L", "P", *_SIXTEEN_BIT_MODES)
_MAX_LISTED = 10

Transform = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class UnsupportedImage(ValueError):
    """An image whose samples have no faithful 8-bit RGB reading (floats, integers beyond 16 bits).

    ``what`` names the file and its values; the message adds the fix for a dataset or a
    model that reads full-precision bands. Callers with another fix (the HTTP server) use ``what``.
    """

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(f"{what}: {fix}")
        self.what = what


class DataError(ValueError):
    """A dataset file cannot be used; the message is one line naming the file and the fix.

    Raised in DataLoader workers too. PyTorch re-raises a worker's exception in the main
    process by calling its class with "Caught DataError in DataLoader worker process N.
    Original Traceback ..." as the message; the constructor keeps only the original line,
    so the user sees what is wrong with which file, not a worker's traceback.
    """

    def __init__(self, message: str) -> None:
        marker = f"{__name__}.DataError: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip().splitlines()[0]
        super().__init__(message)


def list_some(items: Sequence[object]) -> str:
    """``items`` as text, the first few and a count of the rest, so errors stay readable."""
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return f"{shown} (and {rest} more)" if rest > 0 else shown


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour scheme extended to ``num_classes``: distinct, deterministic colours."""
    colours = []
    for label in range(num_classes):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def read_image(path: Path, bands: int | None = None) -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)`` RGB turned upright (see :func:`rgb_from_pil`), or with ``bands``
    its ``bands`` bands at full precision, as stored (see :func:`band_array`). A multi-page TIFF yields its
    first page."""
    if bands is not None:
        return band_array(path, bands)
    if Path(path).suffix.lower() == ARRAY_SUFFIX:
        raise ValueError(f"{path}: .npy images are read at full precision only: set bands (their band count) in "
                         "the dataset description")  # fmt: skip
    with Image.open(path) as im:
        im.seek(0)
        return rgb_from_pil(im, str(path))


# EXIF orientation -> the turn that shows the stored pixels upright (the table of ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}  # fmt: skip


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1: stored upright); unreadable or absent EXIF counts as 1, as in viewers
    that ignore it."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except (OSError, ValueError, SyntaxError, struct.error):
        return 1
    return orientation if isinstance(orientation, int) and orientation in _UPRIGHT else 1


def rgb_from_pil(im: Image.Image, source: str | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB (:func:`rgb_array`), turned upright by the EXIF orientation tag as image viewers
    and annotation tools in browsers show it: training, evaluation and prediction all see a photo this way, so
    masks must match the upright image.

    Only the pixels are turned: ``ImageOps.exif_transpose`` also re-encodes the EXIF block of
    its copy, which fails (``struct.error``) on a camera's malformed tag that reading tolerated.
    """
    turn = _UPRIGHT.get(exif_orientation(im))
    return rgb_array(im if turn is None else im.transpose(turn), source or getattr(im, "filename", "") or "image")


def upright_size_note(path: Path) -> str:
    """For a size-mismatch message: how an EXIF orientation changed the image's size, or ``""``."""
    try:
        with Image.open(path) as im:
            orientation, (w, h) = exif_orientation(im), im.size
    except (OSError, ValueError, SyntaxError):
        return ""
    if orientation < 5:
        return ""
    return (f" (its EXIF orientation {orientation} turns the {w}x{h} stored pixels upright, as viewers show "
            "the photo; a mask must match the upright image)")


def rgb_array(im: Image.Image, source: str = "image") -> np.ndarray:
    """A decoded PIL image as uint8 ``(H, W, 3)`` RGB: the one conversion training, evaluation and prediction share.

    Grey, palette and RGBA images are converted to RGB (alpha dropped). 16-bit images are
    scaled to 8 bits by dividing by 257 (full 16-bit range to full 8-bit range), not
    stretched per image, so intensities stay comparable across files — and never clipped,
    which is what PIL's own conversion does. One whose values stay below 4096 (12-bit data
    stored in 16 bits) would come out nearly black, so it is said loudly (a warning naming
    the file). Floating-point images are refused: read them with ``bands`` (full precision).
    """
    if im.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 65535)
        if lo < 0 or hi > 65535:  # mode I holds signed 32-bit integers (signed 16-bit TIFFs open as I too)
            raise UnsupportedImage(f"{source}: integer values {lo}..{hi}, outside the 0..65535 that is scaled to 8 bits",
                                   "such an image is read at full precision only (bands: 1 in the dataset description), "
                                   "or save it as unsigned 8- or 16-bit")  # fmt: skip
        if hi < 4096:
            warnings.warn(f"{source}: 16-bit image whose values stay below {hi + 1} (of 65536): scaled "
                          "to 8 bits it is nearly black; rescale it to 8 bits or to the full 16-bit range first, "
                          "or read it at full precision (bands: 1 in the dataset description)",
                          stacklevel=2)  # fmt: skip
        grey = np.clip(np.rint(values.astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        raise UnsupportedImage(f"{source}: floating-point samples (mode F), read at full precision only",
                               "set bands: 1 in the dataset description (and train a model on it), "
                               "or save it as 8- or 16-bit")  # fmt: skip
    return np.asarray(im.convert("RGB")).copy()


# PIL modes whose samples band_array takes as they are (palette, 1-bit and CMYK-like modes are not pixel data).
_NATIVE_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I": 1, "F": 1, **{m: 1 for m in _SIXTEEN_BIT_MODES}}


def band_array(path: Path, bands: int) -> np.ndarray:
    """The image at ``path`` as float32 ``(H, W, bands)`` in its stored units: 8-bit, 16-bit, 32-bit integer
    and float samples at full precision, nothing rescaled or clipped (normalising is the model's statistics'
    job). Reads ``.npy`` arrays (``(H, W)`` or ``(H, W, C)``), TIFFs of any band count and sample type and
    PNGs with rasterio (``pip install 'semseg[geo]'``; PIL cuts 16-bit RGB to 8 bits), and other files with
    PIL. ``ValueError`` unless the file holds exactly ``bands`` bands. No-data pixels keep their stored values here; :func:`read_bands` marks them.
    """
    return read_bands(path, bands)[0]


def read_bands(path: Path, bands: int) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`band_array`'s pixels and where they hold data: ``(H, W)`` bool, or ``None`` when all do.

    No data is what GDAL says of a raster (its nodata value, alpha band or mask) and, in any float
    image, a NaN or infinite sample in any band. Training ignores such pixels and band statistics
    leave them out.
    """
    path = Path(path)
    valid = None
    suffix = path.suffix.lower()
    if suffix == ARRAY_SUFFIX:
        array = _mapped_npy(path)
        array = np.array(array[..., None] if array.ndim == 2 else array)  # out of the read-only map
    elif suffix in _GDAL_SUFFIXES and _has_rasterio():
        array, valid = _read_raster_bands(path)
    else:
        if suffix == ".png" and _sixteen_bit_colour_png(path):
            raise ValueError(f"{path} is a 16-bit colour PNG, which PIL reads as 8-bit; install rasterio "
                             "(pip install 'semseg[geo]') to read it at full precision")  # fmt: skip
        with Image.open(path) as im:
            im.seek(0)
            if im.mode not in _NATIVE_MODES:
                raise ValueError(f"{path}: mode {im.mode} images have no bands to read at full precision; save it as "
                                 "grey, RGB(A), 16-bit or float (or as .npy)")  # fmt: skip
            array = np.asarray(im)
        if array.ndim == 2:
            array = array[..., None]
    if array.shape[2] != bands:
        raise ValueError(f"{path} has {array.shape[2]} band(s) but the dataset reads {bands}; set bands: "
                         f"{array.shape[2]} or give every image {bands} band(s)")  # fmt: skip
    pixels = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(pixels).all(axis=2) if pixels.dtype.kind == "f" else None
    if finite is not None and not finite.all():
        valid = finite if valid is None else valid & finite
    return pixels, valid


def declared_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of the image at ``path`` from its header alone, as :func:`read_bands` would read it."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ARRAY_SUFFIX:
        shape = _mapped_npy(path).shape
        return int(shape[0]), int(shape[1])
    if suffix in _GDAL_SUFFIXES and _has_rasterio():
        import rasterio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            try:
                with rasterio.open(path) as src:
                    return src.height, src.width
            except rasterio.errors.RasterioIOError as exc:
                raise OSError(str(exc)) from None
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def _mapped_npy(path: Path) -> np.ndarray:
    """The read-only memory map of a ``.npy`` image, refused unless its header says numbers shaped
    ``(H, W)`` or ``(H, W, bands)``: nothing but the header is read yet."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim not in (2, 3) or array.dtype.kind not in "uif":
        raise ValueError(f"{path}: a .npy image must hold numbers shaped (H, W) or (H, W, bands), got "
                         f"{array.dtype} {array.shape}")  # fmt: skip
    return array


def _sixteen_bit_colour_png(path: Path) -> bool:
    """Whether the PNG header says 16 bits per sample in RGB or RGBA (PIL would give 8)."""
    with open(path, "rb") as f:
        header = f.read(26)
    return len(header) == 26 and header[12:16] == b"IHDR" and header[24] == 16 and header[25] in (2, 6)


def _has_rasterio() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def _read_raster_bands(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Every band of a (Geo)TIFF as ``(H, W, bands)``, with GDAL (PIL reads neither 16-bit RGB nor >4 bands),
    and its dataset mask (``None`` when the raster has no nodata value, alpha band or mask)."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as src:
                all_valid = all(rasterio.enums.MaskFlags.all_valid in flags for flags in src.mask_flag_enums)
                return src.read().transpose(1, 2, 0), None if all_valid else src.dataset_mask() > 0
        except rasterio.errors.RasterioIOError as exc:
            raise OSError(str(exc)) from None


class BandMoments:
    """Running per-band pixel count, sum and sum of squares (float64, so 16-bit and float data keep
    their precision): the one accumulator behind :func:`band_statistics` and ``semseg data check``."""

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None

    def add(self, image: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Count every pixel of an ``(H, W, bands)`` image (only those ``valid`` marks, if given)."""
        x = (image if valid is None else image[valid]).reshape(-1, image.shape[-1]).astype(np.float64)
        self._add(x.shape[0], x.sum(0), np.einsum("ij,ij->j", x, x))

    def merge(self, other: BandMoments) -> None:
        """Add the pixels ``other`` counted (e.g. another split's)."""
        if other.total is not None and other.squares is not None:
            self._add(other.count, other.total, other.squares)

    def _add(self, count: int, total: np.ndarray, squares: np.ndarray) -> None:
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += count

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and standard deviation; a constant band gets std 1 (so normalising never divides by 0)."""
        if self.total is None or self.squares is None or self.count == 0:
            raise ValueError("no pixels to measure band statistics on")
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.squares / self.count - mean * mean, 0.0))
        std[std == 0] = 1.0
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def band_statistics(images: Iterable[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and standard deviation over every pixel of ``images`` (``(H, W, bands)`` arrays)."""
    moments = BandMoments()
    for image in images:
        moments.add(image)
    return moments.result()


def read_mask(path: Path, *, colour: bool = False) -> np.ndarray:
    """A mask file's stored values: ``(H, W)`` integers, or ``(H, W, 3)`` uint8 when ``colour``.

    Palette ("P") masks give their indices, not the colours the palette paints them;
    "L" and 16-bit masks give raw values; 1-bit masks give 0/255. An RGB mask whose
    three channels are equal is read as grey. A multi-page TIFF yields its first page. A ``.npy``
    mask is an ``(H, W)`` integer array.
    """
    if Path(path).suffix.lower() == ARRAY_SUFFIX and not colour:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim != 2 or array.dtype.kind not in "iub":
            raise ValueError(f"{path}: a .npy mask must be an (H, W) integer array, got {array.dtype} {array.shape}")
        return np.array(array, dtype=np.int64)
    with Image.open(path) as im:
        im.seek(0)
        if colour:
            return np.asarray(im.convert("RGB")).copy()
        if im.mode == "1":
            im = im.convert("L")
        if im.mode in _INDEX_MODES:
            return np.asarray(im).astype(np.int64)
        if im.mode in ("RGB", "RGBA", "LA"):
            arr = np.asarray(im)
            grey = arr.shape[2] == 2 or ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
            if grey:
                return arr[..., 0].astype(np.int64)
            raise ValueError(
                f"{path} is a colour mask (mode {im.mode}): set mask_format: rgb and each class's color in the "
                "dataset description (in Python: colors={(r, g, b): class_index, ...}) to map its colours to classes"
            )
        raise ValueError(
            f"{path}: mask mode {im.mode} is not supported; save masks as 8/16-bit grey, palette or RGB PNG"
        )


class MaskDecoder:
    """Turns stored mask values into class indices in ``0..num_classes-1`` or ``ignore_index``.

    ``value_map`` maps stored integer values to classes (``None``: values already are
    class indices). ``colors`` maps RGB triples to classes for colour-coded masks.
    A value or colour that is not listed is an error naming the file and the values,
    because silently ignoring it hides wrong files (e.g. a colour preview passed as a
    mask, or JPEG-compressed masks whose edges hold in-between values).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = 255,
        value_map: Mapping[int, int] | None = None,
        colors: Mapping[tuple[int, int, int], int] | None = None,
    ) -> None:
        if value_map is not None and colors is not None:
            raise ValueError("pass value_map or colors, not both")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.colors = None if colors is None else {tuple(int(c) for c in k): int(v) for k, v in colors.items()}
        if value_map is None and colors is None:
            value_map = {i: i for i in range(num_classes)} | {ignore_index: ignore_index}
        self.value_map = None if value_map is None else {int(k): int(v) for k, v in value_map.items()}
        # Stored values are the classes themselves (no map given, or one that says just that).
        self.identity = self.value_map == {i: i for i in range(num_classes)} | {ignore_index: ignore_index}
        targets = (self.colors or self.value_map or {}).values()
        bad = sorted({t for t in targets if not (0 <= t < num_classes or t == ignore_index)})
        if bad:
            raise ValueError(
                f"mapping targets {bad} are neither class indices 0..{num_classes - 1} nor ignore_index {ignore_index}"
            )
        self._lut: np.ndarray | None = None
        if self.value_map is not None:
            if min(self.value_map, default=0) < 0 or max(self.value_map, default=0) > 65535:
                raise ValueError("value_map keys must lie in 0..65535 (8- or 16-bit mask values)")
            self._lut = np.full(65536, -1, dtype=np.int64)
            for k, v in self.value_map.items():
                self._lut[k] = v

    @property
    def is_colour(self) -> bool:
        """Whether masks are colour-coded, i.e. read as RGB."""
        return self.colors is not None

    def __call__(self, stored: np.ndarray, path: Path) -> np.ndarray:
        """Class indices ``(H, W)`` int64 for the stored values of the mask at ``path``."""
        if self.colors is not None:
            return self._decode_colours(stored, path)
        assert self._lut is not None
        out_of_range = (stored < 0) | (stored > 65535)
        labels = self._lut[np.clip(stored, 0, 65535)]
        unknown = (labels < 0) | out_of_range
        if unknown.any():
            values = np.unique(stored[unknown]).tolist()
            suggestion = {**self.value_map, **{v: self.ignore_index for v in values[:_MAX_LISTED]}}
            raise DataError(
                f"{path}: mask values {list_some(values)} are not mapped to a class (known values: "
                f"{list_some(sorted(self.value_map))}). A value_map replaces the default mapping, so it must list "
                f"every stored value: e.g. value_map: {suggestion} keeps the current mapping and ignores the "
                "new values (map them to a class index instead to train on them)"
            )
        return labels

    def _decode_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        assert self.colors is not None
        codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        uniq, inverse = np.unique(codes, return_inverse=True)
        table = {(r << 16) | (g << 8) | b: v for (r, g, b), v in self.colors.items()}
        mapped = np.array([table.get(int(c), -1) for c in uniq], dtype=np.int64)
        if (mapped < 0).any():
            unknown = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in uniq[mapped < 0].tolist()]
            raise DataError(
                f"{path}: colours {list_some(unknown)} are not in the colour table: give them to a class (its color "
                "in the dataset description) or skip one with ignore_color (in Python: add them to colors=, "
                "mapped to ignore_index to skip them)"
            )
        return mapped[inverse.reshape(codes.shape)]


class DecodedCache:
    """Every ``(image, mask)`` of a dataset, decoded once and held in memory (``data.cache``): masks in
    the smallest integer type that holds them, and copies handed out, since transforms may work in place."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.pairs = pairs

    @classmethod
    def fill(cls, raw: Callable[[int], tuple[np.ndarray, np.ndarray]], count: int, max_bytes: int, *,
             what: str) -> DecodedCache:  # fmt: skip
        """``raw(0) .. raw(count - 1)``; refuses (``ValueError``) before filling memory when the first
        pair, times ``count``, would exceed ``max_bytes``."""
        first_image, first_mask = raw(0)
        estimate = (first_image.nbytes + first_mask.size * 2) * count
        if estimate > max_bytes:
            raise ValueError(f"caching {count} {what} would take ~{estimate / 2**30:.1f} GiB, over the "
                             f"{max_bytes / 2**30:.1f} GiB allowed; set data.cache: false")  # fmt: skip
        pairs = []
        for i in range(count):
            image, mask = raw(i)
            small = np.uint8 if mask.max(initial=0) <= 255 and mask.min(initial=0) >= 0 else np.int32
            pairs.append((image, mask.astype(small)))
        return cls(pairs)

    @property
    def nbytes(self) -> int:
        return sum(image.nbytes + mask.nbytes for image, mask in self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.pairs[index]
        return image.copy(), mask.astype(np.int64)


NO_PAIRS = "no (image, mask) pairs found; check the dataset root and split"  # also `semseg data check`


class PairedDataset(Dataset):
    """A segmentation dataset given as ``(image_path, mask_path)`` pairs and a :class:`MaskDecoder`.

    ``raw(i)`` gives the uint8 ``(H, W, 3)`` image and int64 ``(H, W)`` class mask;
    ``dataset[i]`` passes them through ``transform`` (default: normalise with ImageNet
    statistics and convert to tensors), giving a float ``(3, H, W)`` image and long mask.
    ``mean``/``std`` name that default normalisation, for checkpoints to record.

    With ``bands``, images are read at full precision instead (:func:`band_array`): float32
    ``(H, W, bands)`` in their stored units, for 16-bit, float and multi-band data, normalised
    by ``mean``/``std`` in those units. Without them the statistics are unknown (``None``)
    until :meth:`set_statistics` gives them (the trainer measures them on the train split).
    """

    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        decoder: MaskDecoder,
        *,
        classes: Sequence[str],
        palette: Sequence[tuple[int, int, int]] | None = None,
        transform: Transform | None = None,
        bands: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if not pairs:
            raise ValueError(NO_PAIRS)
        if len(classes) != decoder.num_classes:
            raise ValueError(f"{len(classes)} class names for {decoder.num_classes} classes")
        self.pairs = [(Path(i), Path(m)) for i, m in pairs]
        self.decoder = decoder
        self.classes = tuple(classes)
        self.palette = tuple(tuple(c) for c in palette) if palette is not None else default_palette(len(classes))
        if len(self.palette) < len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        self.ignore_index = decoder.ignore_index
        self.bands = _check_bands(bands, mean, std)
        if bands is not None:
            self.mean = self.std = None
        if mean is not None and std is not None:
            self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.transform = transform if transform is not None else self.eval_transform()
        self._decoded: DecodedCache | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes, not counting ``ignore_index``."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """The model input's channels: ``bands``, or 3 for 8-bit RGB."""
        return 3 if self.bands is None else self.bands

    @property
    def pixel_scale(self) -> float:
        """What pixels are divided by before ``mean``/``std`` apply: 255 for 8-bit RGB, 1 at full precision."""
        return 255.0 if self.bands is None else 1.0

    def set_statistics(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise with ``mean``/``std`` (one per channel, in :attr:`pixel_scale` units) from now on."""
        _check_bands(self.bands, mean, std, required=True)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if isinstance(self.transform, _NeedsStatistics):
            self.transform = self.eval_transform()

    def measure_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and std of every image of this split (no-data pixels left out), in the units
        :meth:`set_statistics` takes (fractions of 255 for 8-bit RGB)."""
        if self.bands is None:
            mean, std = band_statistics(self.raw(i)[0] for i in range(len(self)))
            return tuple(m / 255 for m in mean), tuple(v / 255 for v in std)
        moments = BandMoments()
        for image_path, _ in self.pairs:
            moments.add(*_read_or_fail(read_bands, image_path, "image", bands=self.bands))
        return moments.result()

    def eval_transform(self) -> Transform:
        """Normalisation by this dataset's statistics, nothing random: the transform of evaluation."""
        if self.mean is None or self.std is None:
            return _NeedsStatistics(self.bands)
        return eval_transforms(self.mean, self.std, pixel_scale=self.pixel_scale)

    def __len__(self) -> int:
        return len(self.pairs)

    def cache_decoded(self, max_bytes: int) -> int:
        """Decode every pair once and keep it in memory, so ``raw`` reads no file again; returns the bytes held.

        For datasets that fit in RAM (CamVid's 367 training pairs: ~250 MB), decoding PNGs once
        saves the loader that work every epoch. See :class:`DecodedCache` for the bound.
        """
        self._decoded = DecodedCache.fill(self.raw, len(self), max_bytes, what="decoded pairs")
        return self._decoded.nbytes

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 ``(H, W, 3)`` image (float32 ``(H, W, bands)`` with ``bands``) and int64 ``(H, W)``
        class mask of ``index``, untransformed."""
        if self._decoded is not None:
            return self._decoded[index]
        image_path, mask_path = self.pairs[index]
        valid = None
        if self.bands is None:
            image = _read_or_fail(read_image, image_path, "image")
        else:
            image, valid = _read_or_fail(read_bands, image_path, "image", bands=self.bands)
        mask = self.decoder(_read_or_fail(read_mask, mask_path, "mask", colour=self.decoder.is_colour), mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH); they must match pixel for pixel"
                + ("" if self.bands is not None else upright_size_note(image_path))
            )
        if valid is not None:  # no data: not a label to learn or score, and no value to feed the model
            mask[~valid] = self.ignore_index
            image[~valid] = 0.0 if self.mean is None else np.asarray(self.mean, dtype=np.float32)
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(index)
        return self.transform(image, mask)


class _NeedsStatistics:
    """The transform of a full-precision dataset whose mean/std are not known yet: says how to get them."""

    def __init__(self, bands: int | None) -> None:
        self.bands = bands

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(f"this dataset reads {self.bands} band(s) at full precision but has no mean/std: add them "
                         "to its description (`semseg data check` measures them) or call set_statistics")  # fmt: skip


def _check_bands(bands: int | None, mean: Sequence[float] | None, std: Sequence[float] | None, *,
                 required: bool = False) -> int | None:  # fmt: skip
    """``bands`` checked, with ``mean``/``std`` (one positive std per band; only with ``bands``, as the
    8-bit RGB datasets normalise with ImageNet's)."""
    if bands is not None and (not isinstance(bands, int) or isinstance(bands, bool) or bands < 1):
        raise ValueError(f"bands must be a positive int, got {bands!r}")
    if (mean is None) != (std is None):
        raise ValueError("give mean and std together")
    if mean is None:
        if required:
            raise ValueError("mean and std are required")
        return bands
    if bands is None and not required:
        raise ValueError("mean/std are for datasets read at full precision (bands: N); 8-bit RGB images use "
                         "ImageNet's statistics")  # fmt: skip
    channels = 3 if bands is None else bands
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean and std need {channels} values each (std > 0), got {list(mean)} and {list(std)}")
    return bands


def _read_or_fail(read: Callable[..., Any], path: Path, what: str, **kwargs: object) -> Any:
    """``read(path)``, with any failure (missing, truncated, not an image) as one :class:`DataError` line."""
    try:
        return read(path, **kwargs)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = detail.replace(f"{path}: ", "").replace(str(path), "the file")
        raise DataError(f"{path}: cannot read this {what} ({detail}); replace or remove it "
                        "(`semseg data check` lists every such file)") from None  # fmt: skip


@dataclass
class SplitFiles:
    """One split as found on disk: its pairs, and everything already wrong with it.

    A dataset module's ``scan_split`` fills this without raising, so one description of
    each layout serves both sides: ``semseg data check`` reports every ``(file, message)``
    in ``problems``, and the dataset constructor raises ``error`` -- the first fault, as
    one summary line -- through :meth:`checked_pairs`. ``images``/``masks`` count the
    files found; ``pairs`` are those with both halves present.
    """

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    decoder: MaskDecoder | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    masks: int = 0
    error: Exception | None = None

    def fail(self, error: Exception, *problems: tuple[str, str]) -> None:
        """Record ``problems``; ``error`` is what a constructor raises unless an earlier fault already set one."""
        self.problems.extend(problems)
        if self.error is None:
            self.error = error

    def add_listed(self, pairs: Sequence[tuple[Path, Path]], listing: Path) -> None:
        """Take the pairs that ``listing`` names: those whose files exist, and a problem for each file that does not."""
        exists = {p: p.is_file() for pair in pairs for p in pair}
        missing = [p for pair in pairs for p in pair if not exists[p]]
        if missing:
            self.fail(
                FileNotFoundError(f"{len(missing)} files listed in {listing} do not exist: {list_some(missing)}"),
                *[(str(p), f"listed in {listing} but missing") for p in missing],
            )
        self.pairs += [(i, m) for i, m in pairs if exists[i] and exists[m]]
        self.images += sum(exists[i] for i, _ in pairs)
        self.masks += sum(exists[m] for _, m in pairs)

    def checked_pairs(self) -> list[tuple[Path, Path]]:
        """The pairs, or :attr:`error` raised when anything stops the split from being used."""
        if self.error is not None:
            raise self.error
        return self.pairs
