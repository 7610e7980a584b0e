"""Pictures of segmentations: palette PNG masks, side-by-side panels, training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def palette_image(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A mode-"P" PIL image of the label map ``mask`` (H, W): pixel values are the class ids.

    Viewers show the palette colours, while reading the PNG back gives the ids exactly. A palette
    image holds 256 colours, so a uint16 ``mask`` (the label maps of a model of more than 256
    classes) becomes a 16-bit grey image instead: the ids still exact, without colours.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype == np.uint16:
        return Image.fromarray(mask)
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must lie in 0..255 for a palette PNG, got {mask.min()}..{mask.max()}")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for colour in palette[:256] for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_colour: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """RGB (H, W, 3) uint8 rendering of a label map; ids without a palette entry get ``ignore_colour``."""
    size = max(256, len(palette))  # one row per id a uint8 mask can hold, or per class; then the ignore row
    lut = np.tile(np.asarray(ignore_colour, dtype=np.uint8), (size + 1, 1))
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if mask.dtype == np.uint8:
        return lut[mask]
    ids = mask.astype(np.intp)
    return lut[np.where((ids < 0) | (ids > size), size, ids)]


def side_by_side(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """One RGB image: input | ground truth | prediction, with a 4-pixel white gap between panels."""
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    panels = [image, gap, colorize(truth, palette), gap, colorize(pred, palette)]
    return Image.fromarray(np.concatenate(panels, axis=1))


def plot_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Plot every numeric series in ``history`` (one dict per epoch) against the epoch, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k != "epoch"]
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        # Epochs without a value (e.g. not validated: val_every > 1) are gaps.
        ax.plot(epochs, [float("nan") if h[key] is None else h[key] for h in history], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> Image.Image:
    """The image with each pixel tinted by its class colour (``alpha`` = colour's share)."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, palette).astype(np.float32)
    return Image.fromarray(blended.round().astype(np.uint8))


def cutout(image: np.ndarray, mask: np.ndarray, keep: Sequence[int]) -> Image.Image:
    """RGBA image: the pixels of the classes in ``keep`` opaque, everything else transparent."""
    alpha = np.isin(mask, list(keep)).astype(np.uint8) * 255
    return Image.fromarray(np.dstack([image, alpha]), mode="RGBA")
