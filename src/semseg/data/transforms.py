"""Joint image + mask transforms for training and evaluation.

Each transform takes ``(image, mask, rng)``: a uint8 ``(H, W, 3)`` numpy image (or a
float32 ``(H, W, bands)`` one read at full precision), an int64 ``(H, W)`` numpy mask and a ``numpy.random.Generator``, and returns the new
pair. Geometry is applied to both; photometric changes to the image only. Masks are
only ever resampled nearest-neighbour (by index arithmetic, never interpolation), so
their set of values never grows -- padding adds ``ignore_index`` and nothing else.
:class:`Normalize` is the last step and converts to tensors.

Randomness comes only from the generator passed in. :class:`Compose` owns one,
seeded from ``seed`` (or from torch's global RNG when ``seed`` is None, so
``torch.manual_seed`` makes runs reproducible) and re-seeded automatically inside each
DataLoader worker from the worker's seed -- otherwise every worker would inherit the
same generator state and repeat the same augmentations.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

Pair = tuple[np.ndarray, np.ndarray]


class JointTransform(Protocol):
    """One step of a pipeline: ``(image, mask, rng) -> (image, mask)``."""

    def __call__(self, image: Any, mask: Any, rng: np.random.Generator) -> tuple[Any, Any]: ...


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``; an int means a square."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 ``(H, W, 3)`` or float32 ``(H, W, bands)`` image to ``(height, width)``.

    Float bands are resized one at a time by the same PIL filter as RGB (mode "F", 32-bit
    float), so full-precision data is never quantised on the way.
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    bands = [Image.fromarray(np.ascontiguousarray(image[..., b], dtype=np.float32)).resize((w, h), Image.BILINEAR)
             for b in range(image.shape[2])]  # fmt: skip
    return np.stack([np.asarray(band) for band in bands], axis=2)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W)`` mask; output values are a subset of the input's."""
    h, w = size
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


class Compose:
    """Applies ``transforms`` in order with one generator; see the module docstring for seeding."""

    def __init__(self, transforms: Sequence[JointTransform], *, seed: int | None = None) -> None:
        self.transforms = list(transforms)
        self.seed = int(torch.randint(0, 2**62, ()).item()) if seed is None else seed
        self._rng = np.random.default_rng(self.seed)
        self._worker_seed: int | None = None

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed`` (the trainer does this every epoch, so resumed runs repeat)."""
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._worker_seed = None

    def _generator(self) -> np.random.Generator:
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self._rng = np.random.default_rng([self.seed, info.seed])
        return self._rng

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
        """Transform one pair; ``rng`` overrides the owned generator (e.g. in tests)."""
        rng = self._generator() if rng is None else rng
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask


class Resize:
    """Resize to ``size`` ``(height, width)``, or the shorter side to ``size`` if an int."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Pair:
        if isinstance(self.size, int):
            h, w = mask.shape
            s = self.size / min(h, w)
            out = (max(1, round(h * s)), max(1, round(w * s)))
        else:
            out = _size2(self.size)
        return resize_image(image, out), resize_mask(mask, out)


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale`` -- multi-scale training as in PSPNet/DeepLab."""

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0)) -> None:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        self.scale = scale

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        s = rng.uniform(*self.scale)
        h, w = mask.shape
        out = (max(1, round(h * s)), max(1, round(w * s)))
        return resize_image(image, out), resize_mask(mask, out)


class RandomCrop:
    """Crop ``size`` at a random place, first padding bottom/right up to ``size`` if smaller.

    The image is padded with ``fill`` (one value per band: 0, or the dataset mean so that it
    normalises to zero), the mask with ``ignore_index`` so padding never counts in the
    loss.
    """

    def __init__(self, size: int | Sequence[int], *, ignore_index: int = 255,
                 fill: Sequence[float] = (0, 0, 0)) -> None:  # fmt: skip
        self.size = _size2(size)
        self.ignore_index = ignore_index
        self.fill = np.asarray(fill, dtype=np.float64)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        ch, cw = self.size
        h, w = mask.shape
        if h < ch or w < cw:
            ph, pw = max(ch, h), max(cw, w)
            padded = np.empty((ph, pw, image.shape[2]), dtype=image.dtype)
            padded[:] = self.fill.astype(image.dtype)
            padded[:h, :w] = image
            padded_mask = np.full((ph, pw), self.ignore_index, dtype=mask.dtype)
            padded_mask[:h, :w] = mask
            image, mask, h, w = padded, padded_mask, ph, pw
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        if rng.random() < self.p:
            return image[:, ::-1], mask[:, ::-1]
        return image, mask


class RandomQuarterTurn:
    """Rotate by a random multiple of 90 degrees (0, 90, 180 or 270; only 0 or 180 for a non-square pair,
    so every sample keeps its size and batches still stack). For data with no "up", e.g. the shapes."""

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        k = int(rng.integers(4)) if image.shape[0] == image.shape[1] else 2 * int(rng.integers(2))
        return np.rot90(image, k), np.rot90(mask, k)


class ColorJitter:
    """Random brightness, contrast, saturation (factors in ``1 +- value``) and hue shift (``+- hue`` turns).

    Image only: photometric changes must not move labels. A full-precision (float) image gets
    brightness and contrast only, unclipped (saturation and hue are RGB notions).
    """

    def __init__(
        self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.0
    ) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
        x = image.astype(np.float32)
        factors = [rng.uniform(1 - v, 1 + v) for v in (self.brightness, self.contrast, self.saturation)]
        x = x * factors[0]
        x = (x - x.mean()) * factors[1] + x.mean()
        if image.dtype != np.uint8:
            return x, mask
        grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = (x - grey[..., None]) * factors[2] + grey[..., None]
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        if self.hue > 0:
            hsv = np.asarray(Image.fromarray(out).convert("HSV")).copy()
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(rng.uniform(-self.hue, self.hue) * 255)) % 256
            out = np.array(Image.frombytes("HSV", (hsv.shape[1], hsv.shape[0]), hsv.tobytes()).convert("RGB"))
        return out, mask


class Normalize:
    """Last step: image to float ``(C, H, W)`` tensor, ``(x / pixel_scale - mean) / std``; mask to a long tensor.

    ``pixel_scale`` is 255 for 8-bit RGB (``mean``/``std`` as fractions, ImageNet's convention) and 1
    for images read at full precision (``mean``/``std`` in the stored units).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, pixel_scale: float = 255.0) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.pixel_scale = float(pixel_scale)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        x = x.div_(self.pixel_scale) if self.pixel_scale != 1 else x
        return (x - self.mean) / self.std, torch.from_numpy(np.ascontiguousarray(mask)).long()


def train_transforms(
    crop_size: int | Sequence[int],
    *,
    scale: tuple[float, float] = (0.5, 2.0),
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = 255,
    color_jitter: bool = False,
    seed: int | None = None,
    pixel_scale: float = 255.0,
) -> Compose:
    """The usual recipe: random scale, crop (image padded with the mean), flip, [jitter], normalise.

    ``pixel_scale``: 255 for 8-bit RGB, 1 for full-precision images (see :class:`Normalize`).
    """
    fill = tuple(m * pixel_scale for m in mean)
    fill = tuple(round(f) for f in fill) if pixel_scale == 255 else fill
    steps: list[JointTransform] = [RandomScale(scale), RandomCrop(crop_size, ignore_index=ignore_index, fill=fill)]
    steps.append(RandomHorizontalFlip())
    if color_jitter:
        steps.append(ColorJitter())
    steps.append(Normalize(mean, std, pixel_scale=pixel_scale))
    return Compose(steps, seed=seed)


def eval_transforms(mean: Sequence[float], std: Sequence[float], *, size: int | Sequence[int] | None = None,
                    pixel_scale: float = 255.0) -> Compose:  # fmt: skip
    """Deterministic evaluation transform: optional resize, then normalise (see :class:`Normalize` for
    ``pixel_scale``). Default: full resolution."""
    steps: list[JointTransform] = [] if size is None else [Resize(size)]
    # Nothing here is random; a fixed seed also leaves torch's global RNG untouched.
    return Compose([*steps, Normalize(mean, std, pixel_scale=pixel_scale)], seed=0)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` that seeds Python's and numpy's global RNGs from the worker's torch seed.

    :class:`Compose` already re-seeds itself per worker; this covers any other code in
    the worker that draws from the global RNGs. Pass a seeded ``generator=`` to the
    DataLoader to make the worker seeds, and so the whole run, reproducible.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
