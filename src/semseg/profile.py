"""Model size and cost: parameter counts and FLOPs, measured without running real compute."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from semseg.registry import create_model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def model_cost(name: str, *, num_classes: int, size: tuple[int, int] = (512, 512), **options) -> dict[str, float]:
    """Parameters and forward GFLOPs (one image of ``size``) of model ``name``, in eval mode.

    The model is built on the ``meta`` device, so even a 130M-parameter FCN-8s costs no
    memory or compute to measure. GFLOPs count a multiply-add as 2 FLOPs (PyTorch's
    counter's convention; papers that quote "GMACs" give half this).
    """
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **options).eval()
        x = torch.empty(1, 3, *size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return {"params": count_params(model), "gflops": counter.get_total_flops() / 1e9}
