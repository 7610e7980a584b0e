"""semseg: semantic segmentation in plain PyTorch — FCN, SegNet, U-Net, PSPNet, DeepLab."""

from semseg.registry import create_model, list_models, model_options

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "model_options"]
