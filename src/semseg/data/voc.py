"""PASCAL VOC 2012 segmentation (Everingham et al. 2010), 21 classes including background.

http://host.robots.ox.ac.uk/pascal/VOC/voc2012/
"""

from __future__ import annotations

from pathlib import Path

from semseg.data.base import MaskDecoder, PairedDataset, Transform, check_files_exist, default_palette

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
PALETTE = default_palette(len(CLASSES))  # the VOC scheme: (0,0,0), (128,0,0), (0,128,0), ...


def _voc_root(root: Path) -> Path:
    """Accept ``VOC2012/`` itself or a folder above it (``VOCdevkit/`` or its parent)."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root} holds no VOC2012 tree (expected ImageSets/Segmentation/ under it or under VOCdevkit/VOC2012)"
    )


class VOCSegmentation(PairedDataset):
    """VOC 2012 ``train``/``val``/``trainval``: ``JPEGImages/*.jpg`` with ``SegmentationClass/*.png``.

    The masks are palette PNGs read as indices; the 255 object borders are ignored.
    """

    def __init__(self, root: str | Path, split: str = "train", *, transform: Transform | None = None) -> None:
        voc = _voc_root(Path(root))
        listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"{listing} not found; VOC 2012 splits are train, val and trainval")
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        pairs = [(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png") for i in ids]
        check_files_exist(pairs, listing)
        decoder = MaskDecoder(len(CLASSES), ignore_index=255)
        super().__init__(pairs, decoder, classes=CLASSES, palette=PALETTE, transform=transform)
