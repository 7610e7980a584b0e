"""Cityscapes fine annotations (Cordts et al. 2016), the 19 evaluation classes.

https://www.cityscapes-dataset.com/
"""

from __future__ import annotations

from pathlib import Path

from semseg.data.base import MaskDecoder, PairedDataset, Transform, list_some

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip
# labelId -> trainId of the official cityscapesScripts labels.py; ids not listed (unlabeled,
# ego vehicle, parking, rail track, guard rail, caravan, ...) are not evaluated -> ignore.
LABEL_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
NUM_LABEL_IDS = 34  # labelIds PNGs hold 0..33


class Cityscapes(PairedDataset):
    """``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/{split}/{city}/*_gtFine_labelIds.png``.

    Label ids become the 19 train ids; every other id becomes ``ignore_index`` 255.
    """

    def __init__(self, root: str | Path, split: str = "train", *, transform: Transform | None = None) -> None:
        root = Path(root)
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{image_dir} not found; root must hold leftImg8bit/ and gtFine/")
        pairs = []
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            prefix = image.name[: -len("_leftImg8bit.png")]
            pairs.append((image, root / "gtFine" / split / image.parent.name / f"{prefix}_gtFine_labelIds.png"))
        missing = [str(m) for _, m in pairs if not m.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images have no gtFine labelIds mask: {list_some(missing)}")
        value_map = {i: LABEL_TO_TRAIN.get(i, 255) for i in range(NUM_LABEL_IDS)}
        decoder = MaskDecoder(len(CLASSES), ignore_index=255, value_map=value_map)
        super().__init__(pairs, decoder, classes=CLASSES, palette=PALETTE, transform=transform)
