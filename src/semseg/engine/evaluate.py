"""Evaluation: stream predictions into a confusion matrix, then compute the metrics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from semseg.metrics import ConfusionMatrix, metrics_from_confusion
from semseg.progress import progress_bar


def score_predictions(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], *, num_classes: int, ignore_index: int | None = 255
) -> tuple[torch.Tensor, list[float]]:
    """The ``(C, C)`` matrix ``[true, predicted]`` over ``(prediction, truth)`` label maps, and each image's mIoU.

    The one place predictions are scored: the trainer's validation (batches, ``(N, H, W)``)
    and ``semseg evaluate`` (one image at a time through the Predictor, ``(H, W)``) both
    come here, so ignore handling and counting are the same for both.
    """
    total = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    scores = []
    for pred, truth in pairs:
        for p, t in zip(pred.reshape(-1, *pred.shape[-2:]), truth.reshape(-1, *truth.shape[-2:])):
            one = ConfusionMatrix(num_classes, ignore_index=ignore_index)
            one.update(p, t)
            total.mat += one.mat
            scores.append(metrics_from_confusion(one.mat)["mIoU"])
    return total.mat, scores


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
    pairs = ((model(images.to(device)).argmax(1).cpu(), masks)
             for images, masks in progress_bar(batches, desc="eval", leave=False, enabled=progress))  # fmt: skip
    return score_predictions(pairs, num_classes=num_classes, ignore_index=ignore_index)[0]


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
