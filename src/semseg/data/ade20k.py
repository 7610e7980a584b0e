"""ADE20K scene parsing, the 150-class SceneParsing benchmark (Zhou et al. 2017).

http://sceneparsing.csail.mit.edu/
"""

from __future__ import annotations

from pathlib import Path

from semseg.data.base import MaskDecoder, PairedDataset, SplitFiles, Transform, default_palette
from semseg.data.folder import scan_folder_pairs

# Short names from the benchmark's objectInfo150 (first synonym of each class).
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)  # fmt: skip
# The benchmark ships no palette; the VOC colour scheme gives distinct deterministic colours.
PALETTE = default_palette(len(CLASSES))
_SPLITS = {"train": "training", "val": "validation"}


def decoder() -> MaskDecoder:
    """ADE20K's masks: stored value ``v`` to class ``v - 1``, 0 ("other") to ``ignore_index`` 255."""
    value_map = {0: 255} | {v: v - 1 for v in range(1, len(CLASSES) + 1)}
    return MaskDecoder(len(CLASSES), ignore_index=255, value_map=value_map)


def _benchmark_root(root: Path) -> Path:
    """``ADEChallengeData2016/`` itself, given it or the folder holding it."""
    return root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root


def scan_split(root: Path, split: str) -> SplitFiles:
    """``split``'s (``train`` or ``val``) pairs and problems, without raising: images and annotations paired by name."""
    root, folder = _benchmark_root(root), _SPLITS[split]
    return scan_folder_pairs(root / "images" / folder, root / "annotations" / folder, decoder=decoder())


def scan_splits(root: Path) -> dict[str, SplitFiles]:
    """train and val, where their image folders exist."""
    images = _benchmark_root(root) / "images"
    return {s: scan_split(root, s) for s, folder in _SPLITS.items() if (images / folder).is_dir()}


class ADE20K(PairedDataset):
    """``ADEChallengeData2016/images/{training,validation}/*.jpg`` with ``annotations/.../*.png``.

    Stored value ``v`` is class ``v - 1``; 0 ("other") becomes ``ignore_index`` 255.
    ``root`` may be ``ADEChallengeData2016/`` or the folder holding it.
    """

    def __init__(self, root: str | Path, split: str = "train", *, transform: Transform | None = None) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        pairs = scan_split(Path(root), split).checked_pairs()
        super().__init__(pairs, decoder(), classes=CLASSES, palette=PALETTE, transform=transform)
