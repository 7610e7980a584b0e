"""A small YAML file that describes your own dataset: classes, mask coding and split folders.

```yaml
name: my-data
classes: [background, person, car]     # or [{name: person, color: [220, 20, 60]}, ...]
ignore_index: 255
mask_format: index                     # index | rgb | binary
value_map: {0: 0, 255: 1}              # optional: stored value -> class index
mask_suffix: ""                        # optional: a.jpg pairs with a<mask_suffix>.png
splits:
  train: {images: train/images, masks: train/masks}
  val: {images: val/images, masks: val/masks}
bands: 4                               # optional: read N bands at full precision (16-bit, float, multispectral)
mean: [412.0, 530.5, 301.2, 2210.0]    # optional with bands: per-band statistics in stored units
std: [120.3, 140.2, 98.7, 610.9]       #   (`semseg data check` measures them; else `semseg train` does)
windows: {size: [512, 512], per_epoch: 2000, class_balanced: true}   # optional: big image/label rasters
```

With ``windows``, each split's files are pairs of large (image raster, label raster) read a
window at a time (:class:`~semseg.data.windows.RasterWindows`): random windows for training,
a grid covering every pixel once for validation and evaluation.

Paths are relative to the YAML file. ``mask_format`` says how masks code classes:
``index`` masks hold class indices (or values translated by ``value_map``); ``rgb``
masks paint each class in its ``color`` (``ignore_color`` marks unlabelled pixels);
``binary`` masks hold 0/255 for two classes unless ``value_map`` says otherwise.
Everything is checked on loading, and errors name the file and the key, so a typo
fails before a training run rather than in the middle of one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from semseg.data.base import MaskDecoder, SplitFiles, Transform
from semseg.data.folder import FolderDataset, scan_folder_pairs
from semseg.data.windows import RasterWindows

MASK_FORMATS = ("index", "rgb", "binary")
_KEYS = ("name", "classes", "ignore_index", "mask_format", "value_map", "ignore_color", "mask_suffix", "splits", "bands",
         "mean", "std", "windows")  # fmt: skip
_WINDOW_KEYS = ("size", "per_epoch", "class_balanced")
_SPLIT_KEYS = ("images", "masks")
_BINARY_VALUES = {0: 0, 255: 1}

Colour = tuple[int, int, int]


class DescriptionError(ValueError):
    """A dataset description is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class SplitFolders:
    """Where one split lives: a folder of images and a folder of masks (absolute paths)."""

    images: Path
    masks: Path


@dataclass(frozen=True)
class DatasetDescription:
    """A validated dataset description; :func:`load_description` reads one from YAML."""

    name: str
    classes: tuple[str, ...]
    splits: Mapping[str, SplitFolders]
    palette: tuple[Colour, ...] | None = None
    ignore_index: int = 255
    mask_format: str = "index"
    value_map: Mapping[int, int] | None = None
    ignore_color: Colour | None = None
    mask_suffix: str = ""
    bands: int | None = None  # None: 8-bit RGB; N: N bands at full precision
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    windows: Mapping[str, Any] | None = None  # RasterWindows' size, per_epoch, class_balanced
    source: Path | None = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def colors(self) -> dict[Colour, int] | None:
        """The colour table of ``rgb`` masks (``None`` for other formats)."""
        if self.mask_format != "rgb":
            return None
        assert self.palette is not None
        table = {c: i for i, c in enumerate(self.palette)}
        if self.ignore_color is not None:
            table[self.ignore_color] = self.ignore_index
        return table

    def effective_value_map(self) -> dict[int, int] | None:
        """Stored value -> class for integer masks (``None``: values are class indices already)."""
        if self.mask_format == "binary" and self.value_map is None:
            return dict(_BINARY_VALUES)
        return None if self.value_map is None else dict(self.value_map)

    def decoder(self) -> MaskDecoder:
        """The :class:`MaskDecoder` that turns this dataset's stored masks into class indices."""
        return MaskDecoder(
            self.num_classes, ignore_index=self.ignore_index, value_map=self.effective_value_map(), colors=self.colors
        )

    def scan_split(self, split: str) -> SplitFiles:
        """``split``'s pairs and problems, paired as :meth:`dataset` pairs them, without raising."""
        folders = self.splits[split]
        return scan_folder_pairs(folders.images, folders.masks, mask_suffix=self.mask_suffix, decoder=self.decoder(),
                                 arrays=self.bands is not None)  # fmt: skip

    def dataset(self, split: str, transform: Transform | None = None, *, sampling: str = "grid",
                seed: int = 0) -> FolderDataset | RasterWindows:  # fmt: skip
        """The :class:`FolderDataset` of ``split``, carrying this description's classes and palette; with
        ``windows``, its :class:`RasterWindows` (``sampling``: ``"random"`` for training, else ``"grid"``)."""
        if split not in self.splits:
            raise KeyError(f"{self.name} has no split {split!r}; its splits are {sorted(self.splits)}")
        folders = self.splits[split]
        if self.windows is not None:
            pairs = self.scan_split(split).checked_pairs()
            return RasterWindows(pairs, self.decoder(), classes=self.classes, palette=self.palette, mode=sampling,
                                 seed=seed, transform=transform, bands=self.bands, mean=self.mean, std=self.std,
                                 **self.windows)  # fmt: skip
        return FolderDataset(
            images_dir=folders.images,
            masks_dir=folders.masks,
            classes=self.classes,
            palette=self.palette,
            value_map=self.effective_value_map(),
            colors=self.colors,
            ignore_index=self.ignore_index,
            mask_suffix=self.mask_suffix,
            transform=transform,
            bands=self.bands,
            mean=self.mean,
            std=self.std,
        )


def load_description(path: str | Path) -> DatasetDescription:
    """Read and validate the dataset description at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionError(f"dataset description {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_bytes())  # bytes: PyYAML reads UTF-8 and, by their BOM, UTF-16 files
    except yaml.YAMLError as exc:
        raise DescriptionError(f"{path} is not valid YAML: {exc}") from None
    return parse_description(raw, base=path.parent, source=path)


def parse_description(raw: Any, *, base: Path, source: Path | None = None) -> DatasetDescription:
    """Validate an already-parsed description; relative split paths are taken from ``base``."""
    where = str(source) if source is not None else "dataset description"

    def fail(key: str, message: str) -> DescriptionError:
        return DescriptionError(f"{where}: {key}: {message}")

    if not isinstance(raw, dict):
        raise DescriptionError(f"{where} must hold a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; valid keys are {', '.join(_KEYS)}")
    for key in ("classes", "splits"):
        if key not in raw:
            raise fail(key, "missing (required)")
    name = raw.get("name", source.stem if source is not None else "dataset")
    if not isinstance(name, str) or not name:
        raise fail("name", f"expected a non-empty string, got {name!r}")
    ignore_index = raw.get("ignore_index", 255)
    if not _is_int(ignore_index) or not 0 <= ignore_index <= 65535:
        raise fail("ignore_index", f"expected an integer in 0..65535, got {ignore_index!r}")
    mask_format = raw.get("mask_format", "index")
    if mask_format not in MASK_FORMATS:
        raise fail("mask_format", f"expected one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    classes, palette = _parse_classes(raw["classes"], fail)
    if ignore_index < len(classes):
        raise fail("ignore_index", f"{ignore_index} is a class index (there are {len(classes)} classes)")
    value_map = _parse_value_map(raw.get("value_map"), len(classes), ignore_index, fail)
    ignore_color = None if raw.get("ignore_color") is None else _colour(raw["ignore_color"], "ignore_color", fail)
    if mask_format == "rgb":
        if palette is None:
            raise fail("classes", "mask_format rgb needs a color: [r, g, b] for every class")
        if value_map is not None:
            raise fail("value_map", "not used with mask_format rgb (colours map to classes)")
        clash = sorted({c for c in palette if palette.count(c) > 1} | ({ignore_color} & set(palette)) - {None})
        if clash:
            raise fail("classes", f"colours {clash} are used more than once (or also as ignore_color)")
    elif ignore_color is not None:
        raise fail("ignore_color", "only used with mask_format rgb")
    if mask_format == "binary" and len(classes) != 2:
        raise fail("classes", f"mask_format binary needs exactly 2 classes, got {len(classes)}")
    mask_suffix = raw.get("mask_suffix", "")
    if not isinstance(mask_suffix, str):
        raise fail("mask_suffix", f"expected a string, got {mask_suffix!r}")
    bands, mean, std = _parse_bands(raw, fail)
    windows = _parse_windows(raw.get("windows"), fail)
    return DatasetDescription(
        name=name,
        classes=classes,
        splits=_parse_splits(raw["splits"], base, fail),
        palette=palette,
        ignore_index=ignore_index,
        mask_format=mask_format,
        value_map=value_map,
        ignore_color=ignore_color,
        mask_suffix=mask_suffix,
        bands=bands,
        mean=mean,
        std=std,
        windows=windows,
        source=source,
    )


def _parse_bands(raw: dict, fail: Any) -> tuple[int | None, tuple[float, ...] | None, tuple[float, ...] | None]:
    """``bands`` and its optional per-band ``mean``/``std`` (only with ``bands``; 8-bit RGB uses ImageNet's)."""
    bands = raw.get("bands")
    if bands is not None and (not _is_int(bands) or bands < 1):
        raise fail("bands", f"expected a positive integer (the images' band count), got {bands!r}")
    stats = []
    for key in ("mean", "std"):
        value = raw.get(key)
        if value is None:
            stats.append(None)
            continue
        if bands is None:
            raise fail(key, "only used with bands (8-bit RGB images are normalised with ImageNet's statistics)")
        if not (isinstance(value, list) and len(value) == bands
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):  # fmt: skip
            raise fail(key, f"expected {bands} numbers (one per band), got {value!r}")
        if key == "std" and min(value) <= 0:
            raise fail(key, f"every band's std must be > 0, got {value!r}")
        stats.append(tuple(float(v) for v in value))
    if (stats[0] is None) != (stats[1] is None):
        raise fail("mean" if stats[0] is None else "std", "give mean and std together")
    return bands, stats[0], stats[1]


def _parse_windows(value: Any, fail: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail("windows", f"expected {{size: [H, W], per_epoch: N, class_balanced: bool}}, got {value!r}")
    extra = sorted(str(k) for k in value if k not in _WINDOW_KEYS)
    if extra:
        raise fail(f"windows.{extra[0]}", f"unknown key; valid keys are {', '.join(_WINDOW_KEYS)}")
    size = value.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 32 for v in size)):
        raise fail("windows.size", f"expected [H, W] with both >= 32, got {size!r}")
    per_epoch = value.get("per_epoch", 1000)
    if not _is_int(per_epoch) or per_epoch < 1:
        raise fail("windows.per_epoch", f"expected a positive integer (windows per training epoch), got {per_epoch!r}")
    balanced = value.get("class_balanced", False)
    if not isinstance(balanced, bool):
        raise fail("windows.class_balanced", f"expected true or false, got {balanced!r}")
    return {"size": list(size), "per_epoch": per_epoch, "class_balanced": balanced}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _colour(value: Any, key: str, fail: Any) -> Colour:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in value)):
        raise fail(key, f"expected [r, g, b] with integers 0..255, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def _parse_classes(value: Any, fail: Any) -> tuple[tuple[str, ...], tuple[Colour, ...] | None]:
    """Class names, and their colours when every class gives one (all or none)."""
    if not isinstance(value, list) or not value:
        raise fail("classes", f"expected a non-empty list of names or {{name:, color:}} entries, got {value!r}")
    names: list[str] = []
    colours: list[Colour] = []
    for i, entry in enumerate(value):
        key = f"classes[{i}]"
        if isinstance(entry, dict):
            extra = sorted(str(k) for k in entry if k not in ("name", "color"))
            if extra:
                raise fail(f"{key}.{extra[0]}", "unknown key; a class has name and color")
            entry_name = entry.get("name")
            if "color" in entry:
                colours.append(_colour(entry["color"], f"{key}.color", fail))
        else:
            entry_name = entry
        if not isinstance(entry_name, str) or not entry_name:
            raise fail(key, f"expected a non-empty class name, got {entry_name!r}")
        names.append(entry_name)
    if colours and len(colours) != len(names):
        raise fail("classes", f"{len(colours)} of {len(names)} classes give a color; give one for all or none")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise fail("classes", f"class names {duplicates} appear more than once")
    return tuple(names), (tuple(colours) if colours else None)


def _parse_value_map(value: Any, num_classes: int, ignore_index: int, fail: Any) -> dict[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise fail("value_map", f"expected a mapping {{stored_value: class_index}}, got {value!r}")
    out = {}
    for k, v in value.items():
        if not _is_int(k) or not 0 <= k <= 65535:
            raise fail(f"value_map[{k!r}]", "stored values must be integers in 0..65535")
        if not _is_int(v) or not (0 <= v < num_classes or v == ignore_index):
            raise fail(
                f"value_map[{k}]",
                f"{v!r} is neither a class index 0..{num_classes - 1} nor ignore_index {ignore_index}",
            )
        out[k] = v
    return out


def _parse_splits(value: Any, base: Path, fail: Any) -> dict[str, SplitFolders]:
    if not isinstance(value, dict) or not value:
        raise fail("splits", f"expected a mapping {{split: {{images: dir, masks: dir}}}}, got {value!r}")
    splits = {}
    for split, folders in value.items():
        key = f"splits.{split}"
        if not isinstance(folders, dict):
            raise fail(key, f"expected {{images: dir, masks: dir}}, got {folders!r}")
        extra = sorted(str(k) for k in folders if k not in _SPLIT_KEYS)
        if extra:
            raise fail(f"{key}.{extra[0]}", "unknown key; a split has images and masks")
        paths = []
        for part in _SPLIT_KEYS:
            folder = folders.get(part)
            if not isinstance(folder, str) or not folder:
                raise fail(f"{key}.{part}", f"expected a folder path, got {folder!r}")
            paths.append((base / folder).resolve())
        splits[str(split)] = SplitFolders(*paths)
    return splits
