"""Dataset checking: every problem in every split at once, class statistics and loss weights.

Dataset constructors stop at the first missing file and ``raw(i)`` at the first bad
mask, which is right for training but makes fixing a dataset a slow loop. The checker
instead reads every pair of every split and lists everything: unreadable or truncated
files, images without masks and masks without images, image/mask size mismatches, and
mask values that are neither a declared class nor ``ignore_index``. Along the way it
counts pixels per class and derives two common class weightings for the loss (and, for data
read at full precision, ``bands: N``, each band's mean and std, to put in its description):

* median-frequency balancing (Eigen & Fergus 2015, used by SegNet):
  ``w_c = median(freq) / freq_c``, ``freq_c`` = pixels of ``c`` / total pixels of the
  images in which ``c`` appears;
* ENet's ``w_c = 1 / ln(1.02 + p_c)`` (Paszke et al. 2016), ``p_c`` = share of ``c``
  among all labelled (not ignored) pixels.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from semseg.data import ade20k, camvid, cityscapes, folder, voc
from semseg.data.base import (
    NO_PAIRS, BandMoments, MaskDecoder, exif_orientation, list_some, read_bands, read_mask, upright_size_note,
)
from semseg.data.description import load_description

DATASET_NAMES = ("camvid", "voc", "cityscapes", "ade20k", "folder")
_ERRORS_SHOWN = 50


@dataclass
class SplitStats:
    """Counts and per-label pixel statistics of one split."""

    pairs: int = 0
    images: int = 0
    masks: int = 0
    errors: int = 0
    label_pixels: Counter = field(default_factory=Counter)  # label -> pixels
    present_pixels: Counter = field(default_factory=Counter)  # label -> total pixels of masks holding it
    bad_values: Counter = field(default_factory=Counter)  # stored value -> number of masks holding it
    bands: BandMoments = field(default_factory=BandMoments)  # per-band moments (full-precision data only)
    turned: list[str] = field(default_factory=list)  # images an EXIF orientation turns upright when read


def median_frequency_weights(class_pixels: Sequence[int], present_pixels: Sequence[int]) -> np.ndarray:
    """``median(freq) / freq_c`` with ``freq_c = class_pixels[c] / present_pixels[c]``; absent classes get 0."""
    pixels = np.asarray(class_pixels, dtype=np.float64)
    present = np.asarray(present_pixels, dtype=np.float64)
    seen = pixels > 0
    weights = np.zeros_like(pixels)
    if seen.any():
        freq = pixels[seen] / present[seen]
        weights[seen] = np.median(freq) / freq
    return weights


def enet_weights(class_pixels: Sequence[int], c: float = 1.02) -> np.ndarray:
    """``1 / ln(c + p_c)`` with ``p_c`` each class's share of the labelled pixels; bounded by ``1/ln(c)``."""
    pixels = np.asarray(class_pixels, dtype=np.float64)
    p = pixels / pixels.sum() if pixels.sum() > 0 else pixels
    return 1.0 / np.log(c + p)


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``ok`` when there are no errors (warnings do not count)."""

    classes: tuple[str, ...]
    ignore_index: int
    splits: dict[str, SplitStats]
    problems: list[tuple[str, str, str]]  # (split, file, message)
    warnings: list[str]
    weights_split: str  # the split the weights come from: "train" if there is one, else all
    bands: int | None = None  # full-precision band count (None: 8-bit RGB, no band statistics)

    @property
    def errors(self) -> list[tuple[str, str]]:
        """Every problem as ``(file, message)``."""
        return [(f, m) for _, f, m in self.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def class_pixels(self, split: str | None = None) -> np.ndarray:
        """Pixels per class in ``split`` (``None``: all splits)."""
        return self._per_class("label_pixels", split)

    def _per_class(self, attr: str, split: str | None) -> np.ndarray:
        stats = self.splits.values() if split is None else [self.splits[split]]
        out = np.zeros(len(self.classes), dtype=np.int64)
        for s in stats:
            for label, n in getattr(s, attr).items():
                if 0 <= label < len(self.classes):
                    out[label] += n
        return out

    def _weights_source(self) -> str | None:
        return None if self.weights_split == "all" else self.weights_split

    @property
    def median_frequency_weights(self) -> np.ndarray:
        split = self._weights_source()
        return median_frequency_weights(self.class_pixels(split), self._per_class("present_pixels", split))

    @property
    def enet_weights(self) -> np.ndarray:
        return enet_weights(self.class_pixels(self._weights_source()))

    def band_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """Per-band mean and std over the weights' split (``None`` for 8-bit RGB data or no readable image)."""
        if self.bands is None:
            return None
        moments = BandMoments()
        for name, s in self.splits.items():
            if self.weights_split == "all" or name == self.weights_split:
                moments.merge(s.bands)
        return moments.result() if moments.count else None

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-serialisable types."""
        stats = self.band_statistics()
        splits = {}
        for name, s in self.splits.items():
            splits[name] = {
                "pairs": s.pairs,
                "images": s.images,
                "masks": s.masks,
                "errors": s.errors,
                "class_pixels": self.class_pixels(name).tolist(),
                "ignore_pixels": int(s.label_pixels.get(self.ignore_index, 0)),
                "bad_values": {str(k): v for k, v in sorted(s.bad_values.items())},
            }
        return {
            "ok": self.ok,
            "classes": list(self.classes),
            "ignore_index": self.ignore_index,
            "splits": splits,
            "weights": {
                "split": self.weights_split,
                "median_frequency": [round(float(w), 6) for w in self.median_frequency_weights],
                "enet": [round(float(w), 6) for w in self.enet_weights],
            },
            "bands": None if stats is None else {"count": self.bands, "split": self.weights_split,
                                                 "mean": list(stats[0]), "std": list(stats[1])},
            "errors": [{"split": s, "file": f, "message": m} for s, f, m in self.problems],
            "warnings": list(self.warnings),
        }

    def format_text(self) -> str:
        """A readable report: counts per split, class histogram, weights, warnings and errors."""
        lines = [f"{'split':<12}{'pairs':>8}{'images':>8}{'masks':>8}{'errors':>8}"]
        for name, s in self.splits.items():
            lines.append(f"{name:<12}{s.pairs:>8}{s.images:>8}{s.masks:>8}{s.errors:>8}")
        width = max([len(c) for c in self.classes] + [8]) + 2
        names = list(self.splits)
        lines += ["", f"{'class':<{width}}" + "".join(f"{n + ' %':>12}" for n in names) + f"{'MFB w':>9}{'ENet w':>9}"]
        shares = {}
        for n in names:
            pixels = self.class_pixels(n)
            shares[n] = 100.0 * pixels / max(1, pixels.sum())
        mfb, enet = self.median_frequency_weights, self.enet_weights
        for c, cls in enumerate(self.classes):
            row = "".join(f"{shares[n][c]:>12.3f}" for n in names)
            lines.append(f"{cls:<{width}}{row}{mfb[c]:>9.4f}{enet[c]:>9.4f}")
        ignored = "".join(f"{self.splits[n].label_pixels.get(self.ignore_index, 0):>12}" for n in names)
        lines.append(f"{'(ignored px)':<{width}}{ignored}")
        lines.append(f"weights computed on: {self.weights_split}")
        stats = self.band_statistics()
        if stats is not None:
            lines.append(f"per-band statistics of {self.weights_split} ({self.bands} bands, full precision); "
                         "for the dataset description:")  # fmt: skip
            lines.append(f"mean: [{', '.join(f'{v:.6g}' for v in stats[0])}]")
            lines.append(f"std: [{', '.join(f'{v:.6g}' for v in stats[1])}]")
        for name, s in self.splits.items():
            if s.bad_values:
                shown = ", ".join(f"{v} ({n} masks)" for v, n in sorted(s.bad_values.items())[:20])
                lines.append(f"{name}: undeclared mask values: {shown}")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.problems:
            lines += ["", f"{len(self.problems)} errors:"]
            lines += [f"  [{s}] {f}: {m}" for s, f, m in self.problems[:_ERRORS_SHOWN]]
            if len(self.problems) > _ERRORS_SHOWN:
                lines.append(f"  ... and {len(self.problems) - _ERRORS_SHOWN} more (all are in the JSON report)")
        lines += ["", "OK" if self.ok else "FAILED"]
        return "\n".join(lines)

    def save_histogram_png(self, path: str | Path) -> Path:
        """Bar plot of each class's share of the labelled pixels, one bar per split (log scale)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(self.classes)
        fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 0.35 * n + 2)), 4))
        x = np.arange(n)
        width = 0.8 / max(1, len(self.splits))
        for i, name in enumerate(self.splits):
            pixels = self.class_pixels(name)
            ax.bar(x + i * width, 100.0 * pixels / max(1, pixels.sum()), width, label=name)
        ax.set_xticks(x + 0.4 - width / 2, self.classes, rotation=90, fontsize=8)
        ax.set_ylabel("% of labelled pixels")
        if self.class_pixels().any():
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def check_dataset(
    datasets: Mapping[str, Any],
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    class_names: Sequence[str] | None = None,
    bands: int | None = None,
    windows: bool = False,
) -> CheckReport:
    """Read every pair of every split in ``datasets`` (split name -> dataset) and report all problems.

    With ``bands``, images are read at full precision (as such a dataset reads them: each must have
    ``bands`` bands) and the report carries their per-band mean and std. With ``windows``, pairs are
    large (image raster, label raster) pairs, read block by block as a window dataset reads them.

    A dataset is anything with ``pairs`` (``(image_path, mask_path)``) and optionally
    ``decoder`` (a :class:`MaskDecoder`; without one, stored values are class indices)
    and ``problems`` (``(file, message)`` found before reading, e.g. by a dataset
    module's ``scan_split``): a :class:`PairedDataset` or a :class:`SplitFiles`.
    Classes and ``ignore_index`` default to the first dataset's; when it has none, the
    classes are inferred from the largest label seen.
    """
    first = next(iter(datasets.values()), None)
    if class_names is None:
        class_names = getattr(first, "classes", None)
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    if ignore_index is None:
        ignore_index = getattr(first, "ignore_index", getattr(getattr(first, "decoder", None), "ignore_index", 255))
    declared = num_classes is not None
    check_pair = _check_raster_pair if windows else _check_pair
    problems: list[tuple[str, str, str]] = []
    stats: dict[str, SplitStats] = {}
    for split, ds in datasets.items():
        s = stats[split] = SplitStats(pairs=len(ds.pairs))
        s.images = getattr(ds, "images", 0) or len(ds.pairs)
        s.masks = getattr(ds, "masks", 0) or len(ds.pairs)
        found = [(split, str(f), m) for f, m in getattr(ds, "problems", ())]
        # Faults of the split as a whole (no images folder, no list) name no single file; the
        # dataset classes refuse such a split, so the checker must fail it too.
        error = getattr(ds, "error", None)
        if error is not None and not found:
            found.append((split, "(split)", str(error)))
        if not ds.pairs and not found:
            found.append((split, "(split)", NO_PAIRS))
        decoder = getattr(ds, "decoder", None)
        for image_path, mask_path in ds.pairs:
            found += [
                (split, f, m)
                for f, m in check_pair(image_path, mask_path, decoder, num_classes, ignore_index, s, bands)
            ]
        s.errors = len(found)
        problems += found
    warnings = []
    if not declared:
        labels = [k for s in stats.values() for k in s.label_pixels if k != ignore_index]
        num_classes = max(labels, default=-1) + 1
        warnings.append(
            f"classes not declared: assumed {num_classes} from the mask values; describe them to check labels"
        )
    turned = [path for s in stats.values() for path in s.turned]
    if turned:  # a mask of the stored pixels is refused only when the turn changes the size: say it for all
        warnings.append(f"{len(turned)} image(s) carry an EXIF orientation, so they are read turned upright (as "
                        f"viewers show them), and their masks must match that upright view: {list_some(turned)}")
    if class_names is None or len(class_names) != num_classes:
        class_names = tuple(f"class{i}" for i in range(num_classes))
    weights_split = "train" if "train" in stats else "all"
    report = CheckReport(tuple(class_names), ignore_index, stats, problems, warnings, weights_split, bands)
    absent = [c for c, n in zip(report.classes, report.class_pixels(report._weights_source())) if n == 0]
    if absent:
        report.warnings.append(
            f"classes never seen in {weights_split}: {list_some(absent)} (median-frequency weight 0)"
        )
    return report


def _check_pair(
    image_path: Path, mask_path: Path, decoder: MaskDecoder | None, num_classes: int | None, ignore: int, s: SplitStats,
    bands: int | None = None,
) -> list[tuple[str, str]]:
    """Problems of one pair; adds its pixel counts (and band moments, with ``bands``) to ``s``."""
    problems = []
    size = None
    try:
        if bands is not None:
            pixels, valid = read_bands(Path(image_path), bands)
            size = (pixels.shape[1], pixels.shape[0])
            s.bands.add(pixels, valid)
        else:
            with Image.open(image_path) as im:
                im.seek(0)
                im.load()  # PIL decodes lazily: without this a truncated file passes
                orientation = exif_orientation(im)
                size = im.size[::-1] if orientation >= 5 else im.size  # as training reads it: upright
                if orientation != 1:
                    s.turned.append(str(image_path))
                if im.mode == "F":
                    problems.append((str(image_path), "floating-point image (mode F): read it at full precision "
                                                      "(bands: 1 in the dataset description)"))  # fmt: skip
    except Exception as exc:  # noqa: BLE001 -- any reader failure is a finding, not a crash
        problems.append((str(image_path), f"unreadable image: {type(exc).__name__}: {exc}"))
    colour = decoder is not None and decoder.is_colour
    try:
        stored = read_mask(Path(mask_path), colour=colour)
    except Exception as exc:  # noqa: BLE001
        problems.append((str(mask_path), f"unreadable mask: {type(exc).__name__}: {exc}"))
        return problems
    mask_size = (stored.shape[1], stored.shape[0])
    if size is not None and size != mask_size:
        problems.append(
            (str(mask_path), f"mask is {mask_size[0]}x{mask_size[1]} but image {image_path} is {size[0]}x{size[1]}"
                             + ("" if bands is not None else upright_size_note(image_path)))
        )
    values, counts = _stored_values(stored, colour)
    return problems + _tally(values, counts, stored.shape[0] * stored.shape[1], mask_path, decoder, num_classes, ignore,
                             s, colour)  # fmt: skip


def _tally(values: list[Any], counts: Sequence[int], pixels: int, mask_path: Path, decoder: MaskDecoder | None,
           num_classes: int | None, ignore: int, s: SplitStats, colour: bool) -> list[tuple[str, str]]:  # fmt: skip
    """Add one mask's stored ``values`` (with pixel ``counts``, of ``pixels`` in all) to ``s``; problems for
    values that are no declared class."""
    problems = []
    bad = []
    for value, count in zip(values, counts):
        label = _decode(value, decoder)
        if label is None or (num_classes is not None and not (0 <= label < num_classes or label == ignore)):
            bad.append(value)
            continue
        s.label_pixels[label] += int(count)
        s.present_pixels[label] += int(pixels)
    if bad:
        s.bad_values.update(bad)
        if colour:
            message = (f"mask colours {list_some(bad)} are not in the colour table: give them to a class (its color) "
                       "or skip one with ignore_color")  # fmt: skip
        elif decoder is not None and decoder.value_map is not None and not decoder.identity:  # as training says
            message = (f"mask values {list_some(bad)} are not mapped to a class (known values: "
                       f"{list_some(sorted(decoder.value_map))}); a value_map must list every stored value")  # fmt: skip
        else:
            known = f"classes 0..{num_classes - 1}" if num_classes is not None else "a class"
            message = f"mask values {list_some(bad)} are not {known} or ignore_index {ignore}"
        problems.append((str(mask_path), message))
    return problems


def _check_raster_pair(
    image_path: Path, mask_path: Path, decoder: MaskDecoder | None, num_classes: int | None, ignore: int, s: SplitStats,
    bands: int | None = None,
) -> list[tuple[str, str]]:
    """:func:`_check_pair` for rasters too large to read whole: headers compared, then the label raster
    (and, with ``bands``, the image) read one GDAL block at a time."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(image_path) as image, rasterio.open(mask_path) as label:
                problem = _raster_pair_problem(image, label, image_path, mask_path, bands)
                if problem is not None:
                    return [problem]
                stored: Counter = Counter()
                for _, window in label.block_windows(1):
                    counts = np.bincount(label.read(1, window=window).ravel().astype(np.int64))
                    stored.update({int(v): int(counts[v]) for v in np.flatnonzero(counts)})
                if bands is not None:
                    masked = not all(rasterio.enums.MaskFlags.all_valid in f for f in image.mask_flag_enums)
                    for _, window in image.block_windows(1):
                        pixels = image.read(window=window).transpose(1, 2, 0).astype(np.float32)
                        valid = np.isfinite(pixels).all(axis=2)
                        if masked:
                            valid &= image.dataset_mask(window=window) > 0
                        s.bands.add(pixels, valid)
        except rasterio.errors.RasterioIOError as exc:
            return [(str(mask_path), f"unreadable raster pair: {exc}")]
    values = sorted(stored)
    return _tally(values, [stored[v] for v in values], label.height * label.width, mask_path, decoder, num_classes,
                  ignore, s, False)  # fmt: skip


def _raster_pair_problem(image: Any, label: Any, image_path: Path, mask_path: Path,
                         bands: int | None) -> tuple[str, str] | None:  # fmt: skip
    """What makes an open (image, label) raster pair unusable as a window dataset reads it, from the headers."""
    if (image.height, image.width) != (label.height, label.width):
        return (str(mask_path), f"label raster is {label.width}x{label.height} but image {image_path} is "
                                f"{image.width}x{image.height}")  # fmt: skip
    if label.count != 1:
        return (str(mask_path), f"label raster has {label.count} bands; it must have one (the class values)")
    if label.dtypes[0] not in ("uint8", "uint16", "int16", "int32", "uint32"):
        return (str(mask_path), f"label raster holds {label.dtypes[0]} values; it must hold integer class values")
    if bands is not None and image.count != bands:
        return (str(image_path), f"has {image.count} band(s) but the dataset reads {bands}")
    return None


def _stored_values(stored: np.ndarray, colour: bool) -> tuple[list[Any], np.ndarray]:
    """The distinct stored values (ints, or ``(r, g, b)`` tuples) and their pixel counts."""
    if colour:
        codes = (stored[..., 0].astype(np.int64) << 16) | (stored[..., 1].astype(np.int64) << 8) | stored[..., 2]
        uniq, counts = np.unique(codes, return_counts=True)
        return [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in uniq.tolist()], counts
    counts = np.bincount(stored.ravel())  # read_mask gives non-negative integers
    values = np.flatnonzero(counts)
    return values.tolist(), counts[values]


def _decode(value: Any, decoder: MaskDecoder | None) -> int | None:
    if decoder is None:
        return int(value)
    table = decoder.colors if decoder.is_colour else decoder.value_map
    assert table is not None
    return table.get(value)


# Each module holds its dataset's layout (scan_splits) and classes, which its dataset class uses too.
_LAYOUTS = {"camvid": camvid, "voc": voc, "cityscapes": cityscapes, "ade20k": ade20k}


def check_path(path_or_name: str | Path, root: str | Path | None = None) -> CheckReport:
    """Check a dataset given by a description YAML file, or by name (:data:`DATASET_NAMES`) and ``root``.

    ``"folder"`` checks index masks under ``root`` (``images/`` + ``masks/``, or one such
    pair per split folder) without declared classes; describe the data in YAML to
    check label values too.
    """
    target = str(path_or_name)
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        desc = load_description(target)
        return check_dataset(
            {name: desc.scan_split(name) for name in desc.splits},
            num_classes=desc.num_classes,
            ignore_index=desc.ignore_index,
            class_names=desc.classes,
            bands=desc.bands,
            windows=desc.windows is not None,
        )
    name = target.lower()
    if name not in DATASET_NAMES:
        raise ValueError(f"{target!r} is neither a dataset description (.yaml) nor one of {', '.join(DATASET_NAMES)}")
    if root is None:
        raise ValueError(f"checking {name} needs the dataset root")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    if name == "folder":
        splits = folder.scan_splits(root)
        if not splits:
            raise FileNotFoundError(f"{root} holds neither images/ and masks/ nor split folders holding them")
        return check_dataset(splits, ignore_index=255)
    splits = _LAYOUTS[name].scan_splits(root)
    if not splits:
        raise FileNotFoundError(f"found no {name} splits under {root}")
    return check_dataset(splits, class_names=_LAYOUTS[name].CLASSES, ignore_index=255)


def run_check_command(target: str, *, root: str | None, out: str | None) -> int:
    """``semseg data check``: print the report; with ``out``, write histogram.png and report.json there.

    Returns 0 when the dataset has no errors, else 1 (also when it cannot be checked at all).
    """
    try:
        report = check_path(target, root)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.format_text())
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        report.save_histogram_png(folder / "histogram.png")
        (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {folder / 'histogram.png'} and {folder / 'report.json'}")
    return 0 if report.ok else 1
