"""Inference: the Predictor (pre/post-processing, sliding windows, test-time augmentation)."""

from semseg.inference.predictor import Predictor, to_rgb_array

__all__ = ["Predictor", "to_rgb_array"]
