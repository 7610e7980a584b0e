"""A built-in procedural dataset: textured shapes on textured backgrounds.

Generated deterministically from ``(seed, index)``, so it needs no download, is
identical on every machine and in every DataLoader worker, and serves both as the
demo's dataset and as a fixture for tests.

It is built so that only *shape* tells the classes apart: every object class draws
its colours and texture from the same distribution, the background draws from it
too, objects occlude each other, and pixel noise is added. A per-pixel colour rule
cannot solve it (``tests/test_synthetic.py`` checks that); a network with enough
receptive field can.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from semseg.data.base import DecodedCache

CLASSES = ("background", "disk", "square", "triangle", "cross")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200))
# Per-channel mean and std of the generated images, used to normalise. Measured over
# 2,000 images of seed 1000: (0.503, 0.493, 0.496) and (0.301, 0.299, 0.298); the
# channels are symmetric by construction, so one rounded value serves all three.
MEAN = (0.5, 0.5, 0.5)
STD = (0.3, 0.3, 0.3)

# Relative side length giving each class the same area for the same "size":
# disk r; square side r*sqrt(pi); equilateral triangle side r*sqrt(4*pi/sqrt(3));
# cross of arm half-width w and half-length a with 4*w*a*2 - 4*w*w == pi r^2 (w = a/3).
_TRI = math.sqrt(4 * math.pi / math.sqrt(3))
_CROSS_A = math.sqrt(math.pi / (8 / 3 - 4 / 9))


@dataclass(frozen=True)
class ShapesConfig:
    """Knobs of the generator; the defaults are what the demo trains on."""

    size: int = 48
    min_objects: int = 2
    max_objects: int = 4
    min_radius: float = 0.17  # object "radius" as a fraction of the image side
    max_radius: float = 0.28
    noise_std: float = 0.04
    min_contrast: float = 0.3  # min RGB distance between an object's colour and the background's
    max_occlusion: float = 0.4  # largest fraction of an object that later objects may cover


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random two-colour texture (flat, stripes, checker or blobs): (H, W, 3) image and mean colour."""
    c1 = rng.uniform(0, 1, 3)
    c2 = np.clip(c1 + rng.normal(0, 0.25, 3), 0, 1)
    kind = rng.integers(4)
    if kind == 0:
        t = np.zeros_like(xx)
    elif kind == 1:
        phi, freq = rng.uniform(0, math.pi), rng.uniform(0.3, 0.9)
        t = (np.sin(freq * (xx * math.cos(phi) + yy * math.sin(phi))) > 0).astype(np.float32)
    elif kind == 2:
        cell = rng.integers(3, 9)
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    else:
        g = rng.uniform(0, 1, (5, 5)).astype(np.float32)
        t = torch.nn.functional.interpolate(
            torch.from_numpy(g)[None, None], size=(size, size), mode="bilinear", align_corners=False
        )[0, 0].numpy()
    return c1 * (1 - t[..., None]) + c2 * t[..., None], (c1 + c2) / 2


def _shape_mask(cls: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of one object of class ``cls`` with "radius" ``r`` at a random place and angle."""
    size = xx.shape[0]
    cx, cy = rng.uniform(r, size - r, 2)
    theta = rng.uniform(0, 2 * math.pi)
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    if cls == 1:
        return u * u + v * v <= r * r
    if cls == 2:
        h = r * math.sqrt(math.pi) / 2
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if cls == 3:
        side = r * _TRI
        inr = side / (2 * math.sqrt(3))  # distance from centroid to each edge
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2 * math.pi * k / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= inr
        return inside
    a = r * _CROSS_A
    w = a / 3
    return ((np.abs(u) <= a) & (np.abs(v) <= w)) | ((np.abs(u) <= w) & (np.abs(v) <= a))


def generate_sample(seed: int, index: int, config: ShapesConfig = ShapesConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Image ``(H, W, 3) uint8`` and mask ``(H, W) int64`` for one index of one seed."""
    rng = np.random.default_rng([seed, index])
    size = config.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image, bg_colour = _texture(rng, yy, xx, size)
    mask = np.zeros((size, size), dtype=np.int64)
    visible: list[np.ndarray] = []  # what can still be seen of each object placed so far
    for _ in range(rng.integers(config.min_objects, config.max_objects + 1)):
        cls = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(config.min_radius, config.max_radius) * size
        # Occlusion is allowed, but an object left mostly hidden could not be named even by
        # a person, so re-place the new one until every earlier object keeps most of itself.
        for _attempt in range(20):
            inside = _shape_mask(cls, rng, yy, xx, r)
            if all((v & ~inside).sum() >= (1 - config.max_occlusion) * v.sum() for v in visible):
                break
        else:
            continue
        visible = [v & ~inside for v in visible] + [inside]
        while True:  # an object must stand out from the background, else nobody could label it
            tex, colour = _texture(rng, yy, xx, size)
            if np.linalg.norm(colour - bg_colour) >= config.min_contrast:
                break
        image[inside] = tex[inside]
        mask[inside] = cls
    image = image + rng.normal(0, config.noise_std, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), mask


class SyntheticShapes(Dataset):
    """``length`` procedurally generated (image, mask) pairs; sample ``i`` depends only on ``(seed, i)``.

    Returns a float image tensor ``(3, H, W)`` normalised with :data:`MEAN`/:data:`STD`
    and a long mask ``(H, W)``. Use different seeds for train and validation.
    """

    classes = CLASSES
    palette = PALETTE
    mean = MEAN
    std = STD

    def __init__(self, length: int, *, seed: int = 0, config: ShapesConfig = ShapesConfig()) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length = length
        self.seed = seed
        self.config = config
        # A joint transform ``(image, mask) -> (x, y)`` ending in Normalize, as the file datasets
        # take (the trainer sets its augmentation here); None normalises with MEAN/STD.
        self.transform = None
        self._generated: DecodedCache | None = None

    def __len__(self) -> int:
        return self.length

    def cache_decoded(self, max_bytes: int) -> int:
        """Generate every sample once and keep it in memory (~2 ms a sample saved each epoch); returns the bytes held.

        The same contract as the file datasets' (``data.cache``, :class:`~semseg.data.base.DecodedCache`).
        """
        self._generated = DecodedCache.fill(self.raw, self.length, max_bytes, what="generated samples")
        return self._generated.nbytes

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 image and int64 mask of ``index``, before normalisation."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        if self._generated is not None:
            return self._generated[index]
        return generate_sample(self.seed, index, self.config)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.raw(index)
        if self.transform is not None:
            return self.transform(image, mask)
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        return x, torch.from_numpy(mask)

    @classmethod
    def split(cls, name: str, length: int, *, seed: int = 0, config: ShapesConfig = ShapesConfig()) -> SyntheticShapes:
        """The ``"train"``, ``"val"`` or ``"predict"`` split of run ``seed``: disjoint generator seeds,
        so validation and prediction images are never trained on."""
        offsets = {"train": 1, "val": 2, "predict": 3}
        if name not in offsets:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(offsets)}")
        return cls(length, seed=seed * len(offsets) + offsets[name], config=config)
