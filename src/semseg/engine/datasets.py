"""Datasets by name for the trainer: the config's ``data`` section in, train and val datasets out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from semseg.config import ConfigError, TrainConfig
from semseg.data import ADE20K, CamVid, Cityscapes, FolderDataset, SyntheticShapes, VOCSegmentation
from semseg.data import eval_transforms, load_description, train_transforms
from semseg.data.synthetic import ShapesConfig

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


def build_datasets(config: TrainConfig) -> DatasetBundle:
    """``data.dataset`` is "shapes" (built in), "folder" (``root/<split>/images|masks``), a named
    format, or the path of a dataset description YAML (see :mod:`semseg.data.description`)."""
    data = config.data
    if data.dataset == "shapes":
        return _shapes(data.options)
    described = data.dataset.endswith((".yaml", ".yml"))
    if not described and data.dataset not in DATASETS:
        raise ConfigError(f"data.dataset {data.dataset!r} is unknown; valid datasets: {', '.join(DATASETS)}")
    if described:
        description = load_description(data.dataset)
    elif data.root is None:
        raise ConfigError(f"data.root is required for data.dataset={data.dataset!r}")
    root = Path(data.root or ".")
    if not described and not root.exists():
        raise ConfigError(f"data.root {root} does not exist")

    def make(split: str, train: bool) -> Any:
        if described:
            ds = description.dataset(split)
        elif data.dataset == "folder":
            ds = FolderDataset(root / split, **data.options)
        else:
            ds = _FILE_DATASETS[data.dataset](root, split, **data.options)
        if train and data.crop_size is not None:
            ds.transform = train_transforms(data.crop_size, scale=tuple(data.scale), mean=ds.mean, std=ds.std,
                                            ignore_index=ds.ignore_index, seed=config.seed)  # fmt: skip
        else:
            ds.transform = eval_transforms(ds.mean, ds.std)
        return ds

    train, val = make(data.train_split, True), make(data.val_split, False)
    if train.ignore_index != config.ignore_index:
        raise ConfigError(f"ignore_index is {config.ignore_index} but the dataset marks ignored pixels with "
                          f"{train.ignore_index}; set ignore_index: {train.ignore_index}")  # fmt: skip
    return DatasetBundle(train, val, train.classes, train.palette, tuple(train.mean), tuple(train.std), train.ignore_index)


def _shapes(options: dict[str, Any]) -> DatasetBundle:
    valid = {"train_size", "val_size", "size", "seed"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"unknown data.options {', '.join(unknown)} for shapes; valid: {', '.join(sorted(valid))}")
    seed = options.get("seed", 0)
    shapes = ShapesConfig(size=options.get("size", ShapesConfig.size))
    train = SyntheticShapes(options.get("train_size", 1000), seed=seed * 3 + 1, config=shapes)
    val = SyntheticShapes(options.get("val_size", 100), seed=seed * 3 + 2, config=shapes)
    return DatasetBundle(train, val, SyntheticShapes.classes, SyntheticShapes.palette, SyntheticShapes.mean,
                         SyntheticShapes.std, 255)  # fmt: skip
