"""Segmentation architectures, one paper per module. Importing registers them."""

from semseg.models import deeplab, fcn, lraspp, pspnet, segnet, unet  # noqa: F401
from semseg.models.base import SegmentationModel

__all__ = ["SegmentationModel"]
