"""Evaluation: stream predictions into a confusion matrix, then compute the metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from semseg.metrics import ConfusionMatrix


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = 255,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """mIoU, per-class IoU, pixel accuracy and the rest (see :mod:`semseg.metrics`) over ``batches``."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for images, masks in tqdm(batches, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        pred = model(images.to(device)).argmax(1)
        cm.update(pred, masks)
    return cm.compute(class_names)
