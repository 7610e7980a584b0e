"""Segmentation architectures, one paper per module. Importing registers them."""

from semseg.models import bisenetv2, ddrnet, deeplab, fcn, lraspp, pspnet, segformer, segnet, unet  # noqa: F401
from semseg.models.base import SegmentationModel

__all__ = ["SegmentationModel"]
