"""ADE20K scene parsing, the 150-class SceneParsing benchmark (Zhou et al. 2017).

http://sceneparsing.csail.mit.edu/
"""

from __future__ import annotations

from pathlib import Path

from semseg.data.base import MaskDecoder, PairedDataset, Transform, default_palette
from semseg.data.folder import pair_by_stem

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


class ADE20K(PairedDataset):
    """``ADEChallengeData2016/images/{training,validation}/*.jpg`` with ``annotations/.../*.png``.

    Stored value ``v`` is class ``v - 1``; 0 ("other") becomes ``ignore_index`` 255.
    ``root`` may be ``ADEChallengeData2016/`` or the folder holding it.
    """

    def __init__(self, root: str | Path, split: str = "train", *, transform: Transform | None = None) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        root = Path(root)
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        pairs = pair_by_stem(root / "images" / _SPLITS[split], root / "annotations" / _SPLITS[split])
        value_map = {0: 255} | {v: v - 1 for v in range(1, len(CLASSES) + 1)}
        decoder = MaskDecoder(len(CLASSES), ignore_index=255, value_map=value_map)
        super().__init__(pairs, decoder, classes=CLASSES, palette=PALETTE, transform=transform)
