"""Let torchvision's pure-Python model code import on this CPU-only torch; tests only, never the library.

The torchvision wheel is a CUDA build whose compiled ops do not load next to the CPU torch, and
at import time it registers fake kernels for two op schemas (``nms``, ``qnms``) that those ops
would have defined. Defining the two schemas first lets ``import torchvision`` (and
transformers, which imports it when installed) succeed; its segmentation and classification
models then run on the CPU, detection ops stay unusable. Import this module before either.
"""

import torch

for name in ("nms", "qnms"):
    try:
        torch.library.define(f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        pass  # already defined (the real ops loaded, or this module ran twice)
