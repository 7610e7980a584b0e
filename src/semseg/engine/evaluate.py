"""Evaluation: stream predictions into a confusion matrix, then compute the metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from semseg.progress import progress_bar

from semseg.metrics import ConfusionMatrix, metrics_from_confusion


@torch.inference_mode()
def confusion_matrix(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """The ``(C, C)`` matrix ``[true, predicted]`` of pixel counts over ``batches`` (whole images)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for images, masks in progress_bar(batches, desc="eval", leave=False, enabled=progress):
        cm.update(model(images.to(device)).argmax(1), masks)
    return cm.mat


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
    mat = confusion_matrix(model, batches, num_classes=num_classes, ignore_index=ignore_index, device=device,
                           progress=progress)  # fmt: skip
    return metrics_from_confusion(mat, class_names)
