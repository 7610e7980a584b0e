"""Datasets and joint image/mask transforms.

File-backed datasets (:class:`FolderDataset`, :class:`CamVid`, :class:`VOCSegmentation`,
:class:`Cityscapes`, :class:`ADE20K`) are lists of (image, mask) files plus a
:class:`MaskDecoder`; ``raw(i)`` gives uint8 image and int64 class mask, ``ds[i]``
tensors after the transform.
"""

from semseg.data.ade20k import ADE20K
from semseg.data.base import IMAGENET_MEAN, IMAGENET_STD, MaskDecoder, PairedDataset, read_image, read_mask
from semseg.data.camvid import CamVid
from semseg.data.cityscapes import Cityscapes
from semseg.data.folder import FolderDataset, pair_by_stem
from semseg.data.synthetic import ShapesConfig, SyntheticShapes
from semseg.data.transforms import (
    ColorJitter,
    Compose,
    JointTransform,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
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
    "Cityscapes",
    "ColorJitter",
    "Compose",
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
    "eval_transforms",
    "pair_by_stem",
    "read_image",
    "read_mask",
    "seed_worker",
    "train_transforms",
]
