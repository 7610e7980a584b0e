"""Evaluation: stream predictions into a confusion matrix, then compute the metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
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


def resize_input(x: torch.Tensor, scale: float, min_size: int = 32) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` resized by ``scale`` (bilinear; each side at least ``min_size``): what a model
    run at ``scale`` sees, also for int8 calibration."""
    h, w = x.shape[-2:]
    size = (max(min_size, round(h * scale)), max(min_size, round(w * scale)))
    return x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def probabilities_at(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: float,
                     min_size: int = 32) -> torch.Tensor:  # fmt: skip
    """Softmax probabilities of ``model`` on ``x`` resized by ``scale`` (each side at least ``min_size``),
    resized back to ``x``'s size: the one definition of running a model at another scale, shared by
    the trainer's validation (``data.infer_scale``) and the Predictor (that, times its test-time scales)."""
    h, w = x.shape[-2:]
    probs = model(resize_input(x, scale, min_size)).softmax(1)
    if probs.shape[-2:] != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs


@torch.inference_mode()
def confusion_matrix(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    device: torch.device | str = "cpu",
    progress: bool = True,
    scale: float = 1.0,
) -> torch.Tensor:
    """The ``(C, C)`` matrix ``[true, predicted]`` of pixel counts over ``batches`` (whole images),
    the model run on inputs resized by ``scale`` (:func:`probabilities_at`)."""
    model.eval()

    def predict(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device)
        return (model(images) if scale == 1 else probabilities_at(model, images, scale)).argmax(1).cpu()

    pairs = ((predict(images), masks)
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
    scale: float = 1.0,
) -> dict:
    """mIoU, per-class IoU, pixel accuracy and the rest (see :mod:`semseg.metrics`) over ``batches``,
    the model run on inputs resized by ``scale``."""
    mat = confusion_matrix(model, batches, num_classes=num_classes, ignore_index=ignore_index, device=device,
                           progress=progress, scale=scale)  # fmt: skip
    return metrics_from_confusion(mat, class_names)
