"""semseg: semantic segmentation in plain PyTorch — FCN, SegNet, U-Net, PSPNet, DeepLab."""

import os

# Before torch loads its OpenMP runtime (libgomp), which reads this once: idle OpenMP threads
# sleep instead of spinning ~300,000 times at every barrier. With another process busy on the
# same cores, the spinning threads took the CPU from the ones doing the work, and LR-ASPP at
# 512x512 ran 5-10x slower (docs/benchmarks.md, "Thread defaults"). An explicit setting wins;
# importing torch before semseg leaves torch's own default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from semseg.registry import create_model, list_models, model_options  # noqa: E402

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "model_options"]
