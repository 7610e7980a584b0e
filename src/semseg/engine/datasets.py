"""Datasets by name for the trainer: the config's ``data`` section in, train and val datasets out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from semseg.config import ConfigError, TrainConfig
from semseg.data import ADE20K, CamVid, Cityscapes, FolderDataset, SyntheticShapes, VOCSegmentation
from semseg.data import Compose, Normalize, RandomHorizontalFlip, RandomQuarterTurn
from semseg.data import eval_transforms, load_description, train_transforms
from semseg.data.synthetic import ShapesConfig
from semseg.typecheck import OptionError, check_options

_FILE_DATASETS = {"camvid": CamVid, "voc": VOCSegmentation, "cityscapes": Cityscapes, "ade20k": ADE20K}
DATASETS = ("shapes", "folder", *_FILE_DATASETS, "<description>.yaml")


@dataclass(frozen=True)
class DatasetBundle:
    """Train and val datasets plus what checkpoints must remember about them."""

    train: Dataset
    val: Dataset
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ignore_index: int
    bands: int | None = None  # None: 8-bit RGB input; N: N bands read at full precision

    @property
    def channels(self) -> int:
        """The model's input channels."""
        return 3 if self.bands is None else self.bands


def open_dataset(dataset: str, split: str, *, root: str | None = None, options: dict[str, Any] | None = None,
                 sampling: str = "grid", seed: int = 0) -> Any:  # fmt: skip
    """One split of a named format ("folder" is ``root/<split>/images|masks``) or of a description YAML.

    Images are normalised with the dataset's own statistics and no augmentation; the
    trainer swaps in its training transform. ``sampling`` and ``seed`` apply to a description
    with ``windows`` (large rasters): ``"random"`` windows for training, else a covering grid.
    """
    options = options or {}
    if dataset.endswith((".yaml", ".yml")):
        if options:
            raise ConfigError(f"options {', '.join(sorted(options))} do not apply to a description YAML "
                              f"({dataset}): set them in that file")  # fmt: skip
        ds = load_description(dataset).dataset(split, sampling=sampling, seed=seed)
    else:
        if dataset not in DATASETS or dataset == "shapes":
            raise ConfigError(f"dataset {dataset!r} is unknown; valid datasets: {', '.join(DATASETS)}")
        if root is None:
            raise ConfigError(f"a root folder is required for dataset {dataset!r}")
        if not Path(root).exists():
            raise ConfigError(f"dataset root {root} does not exist")
        cls = FolderDataset if dataset == "folder" else _FILE_DATASETS[dataset]
        if dataset == "folder" and "classes" not in options:
            raise ConfigError("dataset 'folder' needs options.classes: the class names, or their number")
        try:
            options = check_options(cls, options, what=f"dataset {dataset!r}", prefix="options.",
                                    exclude={"root", "split", "transform"})  # fmt: skip
        except OptionError as exc:
            raise ConfigError(str(exc)) from None
        ds = cls(Path(root) / split, **options) if dataset == "folder" else cls(root, split, **options)
    ds.transform = ds.eval_transform()
    return ds


def build_datasets(config: TrainConfig) -> DatasetBundle:
    """``data.dataset`` is "shapes" (built in), "folder", a named format, or a description YAML's path."""
    data = config.data
    if data.dataset == "shapes":
        return _shapes(data.options, cache=data.cache, seed=config.seed)
    try:
        train = open_dataset(data.dataset, data.train_split, root=data.root, options=data.options, sampling="random",
                             seed=config.seed)  # fmt: skip
        val_options = data.options if data.val_options is None else data.val_options
        val = open_dataset(data.dataset, data.val_split, root=data.root, options=val_options)
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from None
    if train.bands != val.bands:
        raise ConfigError(f"data: the train split reads {train.bands} band(s) but the val split {val.bands}; "
                          "use one bands setting for both")  # fmt: skip
    if data.color_jitter and train.bands is not None:
        raise ConfigError("data.color_jitter changes brightness, contrast and saturation of 8-bit RGB images; it "
                          "has no meaning for bands read at full precision: set it to false")  # fmt: skip
    if train.mean is None:  # full-precision bands without statistics: measure them on train, once
        mean, std = train.measure_statistics()
        print(f"measured the train split's per-band statistics (add them to the dataset description to skip this): "
              f"mean: {[round(v, 4) for v in mean]}, std: {[round(v, 4) for v in std]}", flush=True)  # fmt: skip
        train.set_statistics(mean, std)
    if val.mean != train.mean or val.std != train.std:
        val.set_statistics(train.mean, train.std)  # val is normalised as the model was trained
        val.transform = val.eval_transform()
    if data.cache:  # after the statistics: no-data pixels are cached filled with the mean
        try:
            train.cache_decoded(max_bytes=_total_memory() // 4)
        except ValueError as exc:
            raise ConfigError(f"data.cache: {exc}") from None
    if data.crop_size is not None:
        train.transform = train_transforms(data.crop_size, scale=tuple(data.scale), mean=train.mean, std=train.std,
                                           ignore_index=train.ignore_index, color_jitter=data.color_jitter,
                                           seed=config.seed, pixel_scale=train.pixel_scale)  # fmt: skip
    if train.ignore_index != config.ignore_index:
        raise ConfigError(f"ignore_index is {config.ignore_index} but the dataset marks ignored pixels with "
                          f"{train.ignore_index}; set ignore_index: {train.ignore_index}")  # fmt: skip
    return DatasetBundle(train, val, train.classes, train.palette, tuple(train.mean), tuple(train.std), train.ignore_index,
                         train.bands)  # fmt: skip


def _total_memory() -> int:
    """Physical memory in bytes (POSIX), the bound the decoded-image cache stays well under."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _shapes(options: dict[str, Any], *, cache: bool, seed: int) -> DatasetBundle:
    """The built-in shapes; ``augment`` adds random quarter turns and flips (no class changes under either)."""
    valid = {"train_size", "val_size", "size", "seed", "augment"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"unknown data.options {', '.join(unknown)} for shapes; valid: {', '.join(sorted(valid))}")
    for key, value in options.items():
        kind = bool if key == "augment" else int
        if type(value) is not kind:  # bool is an int subclass: compare exactly
            raise ConfigError(f"data.options.{key} for shapes must be {kind.__name__}, got {value!r}")
    shapes = ShapesConfig(size=options.get("size", ShapesConfig.size))
    data_seed = options.get("seed", 0)
    train = SyntheticShapes.split("train", options.get("train_size", 1000), seed=data_seed, config=shapes)
    val = SyntheticShapes.split("val", options.get("val_size", 100), seed=data_seed, config=shapes)
    if options.get("augment", False):
        train.transform = Compose([RandomQuarterTurn(), RandomHorizontalFlip(), Normalize(train.mean, train.std)],
                                  seed=seed)  # fmt: skip
    if cache:
        for split in (train, val):
            try:
                split.cache_decoded(max_bytes=_total_memory() // 8)
            except ValueError as exc:
                raise ConfigError(f"data.cache: {exc}") from None
    return DatasetBundle(train, val, SyntheticShapes.classes, SyntheticShapes.palette, SyntheticShapes.mean,
                         SyntheticShapes.std, 255)  # fmt: skip
