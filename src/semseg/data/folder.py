"""Your own data: a folder of images and a folder of masks, paired by file name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from semseg.data.base import ARRAY_SUFFIX, IMAGE_SUFFIXES, MaskDecoder, PairedDataset, SplitFiles, Transform, list_some


def scan_folder_pairs(
    images_dir: Path, masks_dir: Path, *, mask_suffix: str = "", decoder: MaskDecoder | None = None,
    arrays: bool = False,
) -> SplitFiles:
    """``(image, mask)`` pairs whose names match: ``a.jpg`` with ``a<mask_suffix>.png`` (any image type;
    with ``arrays``, for data read at full precision, ``.npy`` files too).

    Every image needs a mask and every mask an image, because a silently dropped half
    usually means a wrong folder; each unmatched or ambiguously named file is a problem.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    files = SplitFiles(decoder=decoder)
    suffixes = (*IMAGE_SUFFIXES, ARRAY_SUFFIX) if arrays else IMAGE_SUFFIXES
    images = _files_by_stem(images_dir, "", files, suffixes)
    masks = _files_by_stem(masks_dir, mask_suffix, files, suffixes)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        summary = []
        if no_mask:
            what = f"have no mask{mask_suffix}.* in {masks_dir}"
            summary.append(f"{len(no_mask)} images in {images_dir} {what}: {list_some(no_mask)}")
        if no_image:
            summary.append(f"{len(no_image)} masks in {masks_dir} have no image in {images_dir}: {list_some(no_image)}")
        files.fail(
            FileNotFoundError("; ".join(summary) + ". Add the missing files or remove the extra ones"),
            *[(str(images[s]), f"image has no mask {s}{mask_suffix}.* in {masks_dir}") for s in no_mask],
            *[(str(masks[s]), f"mask has no image {s}.* in {images_dir}") for s in no_image],
        )
    if not images:
        files.fail(FileNotFoundError(f"no images ({', '.join(suffixes)}) in {images_dir}"))
    files.pairs = [(images[s], masks[s]) for s in sorted(set(images) & set(masks))]
    files.images, files.masks = len(images), len(masks)
    return files


def _files_by_stem(folder: Path, strip: str, files: SplitFiles, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Image files in ``folder`` keyed by stem (minus the suffix ``strip``); a missing folder or a
    second file with a taken stem (``a.png`` beside ``a.jpg``) is a problem recorded in ``files``."""
    if not folder.is_dir():
        files.fail(FileNotFoundError(f"{folder} is not a directory"), (str(folder), "folder does not exist"))
        return {}
    found: dict[str, Path] = {}
    clashes: list[tuple[Path, Path]] = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and p.stem.endswith(strip):
            stem = p.stem[: len(p.stem) - len(strip)]
            if stem in found:
                clashes.append((p, found[stem]))
            else:
                found[stem] = p
    if clashes:
        names = [f"{earlier.name}, {p.name}" for p, earlier in clashes]
        files.fail(
            ValueError(f"{folder} has several files per name, so pairing is ambiguous: {list_some(names)}; keep one"),
            *[(str(p), f"same name as {earlier.name}, so pairing is ambiguous; keep one") for p, earlier in clashes],
        )
    return found


def pair_by_stem(
    images_dir: Path, masks_dir: Path, *, mask_suffix: str = "", arrays: bool = False
) -> list[tuple[Path, Path]]:
    """The pairs :func:`scan_folder_pairs` finds; raises on the first problem, listing the unmatched names."""
    return scan_folder_pairs(images_dir, masks_dir, mask_suffix=mask_suffix, arrays=arrays).checked_pairs()


def scan_splits(root: Path) -> dict[str, SplitFiles]:
    """``root/images`` + ``root/masks`` as split "all", or each ``root/<split>/{images,masks}``."""
    if (root / "images").is_dir():
        return {"all": scan_folder_pairs(root / "images", root / "masks")}
    return {
        d.name: scan_folder_pairs(d / "images", d / "masks")
        for d in sorted(root.iterdir())
        if (d / "images").is_dir() or (d / "masks").is_dir()
    }


class FolderDataset(PairedDataset):
    """Images and masks from two folders, paired by file stem.

    Give ``root`` (holding ``images/`` and ``masks/``) or ``images_dir`` and ``masks_dir``.
    Images may be PNG, JPEG, BMP, TIFF or WebP; 16-bit images are scaled to 8 bits and
    multi-page TIFFs contribute their first page only. Masks may be:

    * index masks (grey "L", 16-bit, or palette "P" -- read as indices, not colours)
      holding class indices, with ``ignore_index`` (default 255) for unlabelled pixels;
    * any integer coding, translated by ``value_map`` -- e.g. binary 0/255 masks with
      ``value_map={0: 0, 255: 1}``; map a value to ``ignore_index`` to skip it;
    * RGB colour-coded masks, translated by ``colors={(r, g, b): class_index}``.

    Values or colours not covered raise an error naming the file and the values.
    ``classes`` is the class names or just their number. ``mask_suffix="_mask"`` pairs
    ``a.jpg`` with ``a_mask.png``. ``bands=N`` reads images at full precision instead of as
    8-bit RGB -- N bands of 8/16-bit, integer or float samples from PNG, TIFF (with rasterio:
    any band count) or ``.npy`` files -- normalised by ``mean``/``std`` in the stored units.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        images_dir: str | Path | None = None,
        masks_dir: str | Path | None = None,
        classes: Sequence[str] | int,
        palette: Sequence[tuple[int, int, int]] | None = None,
        value_map: Mapping[int, int] | None = None,
        colors: Mapping[tuple[int, int, int], int] | None = None,
        ignore_index: int = 255,
        mask_suffix: str = "",
        transform: Transform | None = None,
        bands: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if (root is None) == (images_dir is None or masks_dir is None):
            raise ValueError("pass either root (holding images/ and masks/) or both images_dir and masks_dir")
        if root is not None:
            images_dir, masks_dir = Path(root) / "images", Path(root) / "masks"
        names = tuple(f"class{i}" for i in range(classes)) if isinstance(classes, int) else tuple(classes)
        if palette is None and colors is not None:
            by_class = {v: k for k, v in colors.items() if v != ignore_index}
            if set(by_class) == set(range(len(names))):
                palette = [by_class[i] for i in range(len(names))]
        decoder = MaskDecoder(len(names), ignore_index=ignore_index, value_map=value_map, colors=colors)
        pairs = pair_by_stem(Path(images_dir), Path(masks_dir), mask_suffix=mask_suffix, arrays=bands is not None)
        super().__init__(pairs, decoder, classes=names, palette=palette, transform=transform, bands=bands, mean=mean,
                         std=std)  # fmt: skip
