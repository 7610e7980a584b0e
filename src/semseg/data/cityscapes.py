"""Cityscapes fine annotations (Cordts et al. 2016), the 19 evaluation classes.

https://www.cityscapes-dataset.com/
"""

from __future__ import annotations

from pathlib import Path

from semseg.data.base import MaskDecoder, PairedDataset, SplitFiles, Transform, list_some

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
_IMAGE, _MASK = "_leftImg8bit.png", "_gtFine_labelIds.png"  # a frame's two files: <city>_<seq>_<frame><suffix>


def decoder() -> MaskDecoder:
    """Cityscapes' labelIds masks: each label id to its train id, every other id to ``ignore_index`` 255."""
    value_map = {i: LABEL_TO_TRAIN.get(i, 255) for i in range(NUM_LABEL_IDS)}
    return MaskDecoder(len(CLASSES), ignore_index=255, value_map=value_map)


def scan_split(root: Path, split: str) -> SplitFiles:
    """``split``'s pairs and problems, without raising: each ``leftImg8bit`` image with its ``gtFine`` mask.

    A mask without an image is reported but does not stop the dataset, which starts from the images.
    """
    image_dir, mask_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    files = SplitFiles(decoder=decoder())
    if not image_dir.is_dir():
        files.fail(FileNotFoundError(f"{image_dir} not found; root must hold leftImg8bit/ and gtFine/"))
    images = sorted(image_dir.glob(f"*/*{_IMAGE}"))
    masks = sorted(mask_dir.glob(f"*/*{_MASK}"))
    mask_of = {i: mask_dir / i.parent.name / (i.name[: -len(_IMAGE)] + _MASK) for i in images}
    missing = [i for i, m in mask_of.items() if not m.is_file()]
    if missing:
        files.fail(
            FileNotFoundError(
                f"{len(missing)} images have no gtFine labelIds mask: {list_some([mask_of[i] for i in missing])}"
            ),
            *[(str(i), "image has no gtFine labelIds mask") for i in missing],
        )
    image_of = {m: image_dir / m.parent.name / (m.name[: -len(_MASK)] + _IMAGE) for m in masks}
    files.problems += [(str(m), "mask has no leftImg8bit image") for m, i in image_of.items() if not i.is_file()]
    files.pairs = [(i, m) for i, m in mask_of.items() if m.is_file()]
    files.images, files.masks = len(images), len(masks)
    return files


def scan_splits(root: Path) -> dict[str, SplitFiles]:
    """train and val, where either their images or their masks exist."""
    splits = {s: scan_split(root, s) for s in ("train", "val")}
    return {s: files for s, files in splits.items() if files.images or files.masks}


class Cityscapes(PairedDataset):
    """``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/{split}/{city}/*_gtFine_labelIds.png``.

    Label ids become the 19 train ids; every other id becomes ``ignore_index`` 255.
    """

    def __init__(self, root: str | Path, split: str = "train", *, transform: Transform | None = None) -> None:
        pairs = scan_split(Path(root), split).checked_pairs()
        super().__init__(pairs, decoder(), classes=CLASSES, palette=PALETTE, transform=transform)
