"""PASCAL VOC 2012 segmentation (Everingham et al. 2010), 21 classes including background.

http://host.robots.ox.ac.uk/pascal/VOC/voc2012/
"""

from __future__ import annotations

from pathlib import Path

from semseg.data.base import MaskDecoder, PairedDataset, SplitFiles, Transform, default_palette

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


def decoder() -> MaskDecoder:
    """VOC's palette-index masks: class indices as stored, 255 (object borders) ignored."""
    return MaskDecoder(len(CLASSES), ignore_index=255)


def _listing(voc: Path, split: str) -> Path:
    return voc / "ImageSets" / "Segmentation" / f"{split}.txt"


def scan_split(root: Path, split: str) -> SplitFiles:
    """``split``'s pairs and problems, without raising; a root holding no VOC tree at all still raises.

    The split's list names ids: ``JPEGImages/<id>.jpg`` pairs with ``SegmentationClass/<id>.png``.
    """
    voc = _voc_root(root)
    listing = _listing(voc, split)
    files = SplitFiles(decoder=decoder())
    if not listing.is_file():
        files.fail(FileNotFoundError(f"{listing} not found; VOC 2012 splits are train, val and trainval"))
        return files
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    files.add_listed([(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png") for i in ids], listing)
    return files


def scan_splits(root: Path) -> dict[str, SplitFiles]:
    """train and val, where their lists exist."""
    voc = _voc_root(root)
    return {s: scan_split(root, s) for s in ("train", "val") if _listing(voc, s).is_file()}


class VOCSegmentation(PairedDataset):
    """VOC 2012 ``train``/``val``/``trainval``: ``JPEGImages/*.jpg`` with ``SegmentationClass/*.png``.

    The masks are palette PNGs read as indices; the 255 object borders are ignored.
    """

    def __init__(self, root: str | Path, split: str = "train", *, transform: Transform | None = None) -> None:
        pairs = scan_split(Path(root), split).checked_pairs()
        super().__init__(pairs, decoder(), classes=CLASSES, palette=PALETTE, transform=transform)
