"""Datasets and joint image/mask transforms.

File-backed datasets (:class:`FolderDataset`, :class:`CamVid`, :class:`VOCSegmentation`,
:class:`Cityscapes`, :class:`ADE20K`) are lists of (image, mask) files plus a
:class:`MaskDecoder`; ``raw(i)`` gives uint8 image and int64 class mask, ``ds[i]``
tensors after the transform. :func:`load_description` reads a YAML description of your
own data; :func:`check_dataset` / :func:`check_path` list everything wrong with a dataset.
"""

from semseg.data.ade20k import ADE20K
from semseg.data.base import IMAGENET_MEAN, IMAGENET_STD, DataError, MaskDecoder, PairedDataset, read_image, read_mask
from semseg.data.camvid import CamVid
from semseg.data.check import CheckReport, check_dataset, check_path, run_check_command
from semseg.data.cityscapes import Cityscapes
from semseg.data.description import DatasetDescription, DescriptionError, load_description
from semseg.data.folder import FolderDataset, pair_by_stem
from semseg.data.synthetic import ShapesConfig, SyntheticShapes
from semseg.data.transforms import (
    ColorJitter,
    Compose,
    JointTransform,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomQuarterTurn,
    RandomScale,
    Resize,
    eval_transforms,
    seed_worker,
    train_transforms,
)
from semseg.data.voc import VOCSegmentation

__all__ = [
    "ADE20K",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CamVid",
    "CheckReport",
    "Cityscapes",
    "ColorJitter",
    "Compose",
    "DataError",
    "DatasetDescription",
    "DescriptionError",
    "FolderDataset",
    "JointTransform",
    "MaskDecoder",
    "Normalize",
    "PairedDataset",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "Resize",
    "ShapesConfig",
    "SyntheticShapes",
    "VOCSegmentation",
    "check_dataset",
    "check_path",
    "eval_transforms",
    "load_description",
    "pair_by_stem",
    "read_image",
    "read_mask",
    "run_check_command",
    "seed_worker",
    "train_transforms",
]
