"""Segmentation metrics from a streaming confusion matrix.

Only the ``(C, C)`` confusion matrix is accumulated, never the logits, so evaluation
memory does not grow with the dataset; matrices from several processes are simply summed.
"""

from __future__ import annotations

import torch


class ConfusionMatrix:
    """Accumulates ``mat[true, pred]`` pixel counts, skipping pixels labelled ``ignore_index``."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps (same shape, integer)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).cpu(), target.reshape(-1).cpu()
        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        pred, target = pred[keep].long(), target[keep].long()
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            bad = sorted(set(target[(target < 0) | (target >= self.num_classes)].unique().tolist()))
            raise ValueError(
                f"target holds label values {bad} outside 0..{self.num_classes - 1} "
                f"and not equal to ignore_index={self.ignore_index}"
            )
        idx = target * self.num_classes + pred
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def compute(self, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
        """mIoU, per-class IoU, pixel accuracy, mean class accuracy, FWIoU and per-class Dice.

        Classes absent from both ground truth and prediction get IoU NaN and are left
        out of the means (the convention of the PASCAL VOC and Cityscapes evaluators).
        """
        return metrics_from_confusion(self.mat, class_names)


def metrics_from_confusion(mat: torch.Tensor, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
    """Standard metrics from a ``(C, C)`` confusion matrix ``mat[true, pred]``."""
    mat = mat.double()
    tp = mat.diag()
    gt = mat.sum(1)
    pred = mat.sum(0)
    union = gt + pred - tp
    iou = tp / union  # NaN where the class is absent from both
    acc = tp / gt
    dice = 2 * tp / (gt + pred)
    total = mat.sum()
    freq = gt / total
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    valid = ~torch.isnan(iou)
    return {
        "mIoU": float(iou[valid].mean()) if valid.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": float(acc[~torch.isnan(acc)].mean()) if (~torch.isnan(acc)).any() else float("nan"),
        "fw_IoU": float((freq[valid] * iou[valid]).sum()),
        "mean_dice": float(dice[~torch.isnan(dice)].mean()) if (~torch.isnan(dice)).any() else float("nan"),
        "per_class_IoU": {n: float(v) for n, v in zip(names, iou.tolist())},
        "per_class_accuracy": {n: float(v) for n, v in zip(names, acc.tolist())},
        "per_class_dice": {n: float(v) for n, v in zip(names, dice.tolist())},
    }
