"""Segmentation losses. Every one honours ``ignore_index`` and per-class ``weight``.

All take logits ``(N, C, H, W)`` and integer targets ``(N, H, W)``. Pixels labelled
``ignore_index`` (void, borders, unlabelled) contribute nothing to the loss or its
gradient. Class weights — e.g. the median-frequency weights SegNet used on CamVid — scale
each pixel's term by the weight of its *true* class and normalise by the sum of those
weights, the convention of ``torch.nn.functional.cross_entropy``, so a weighted loss stays
a weighted mean rather than growing with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _PixelLoss(nn.Module):
    """Holds ``ignore_index`` and the optional class weights (a buffer, so it follows ``.to(device)``)."""

    def __init__(self, *, ignore_index: int = 255, weight: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"expected logits (N, C, H, W) and target (N, H, W), got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise ValueError(f"{self.weight.numel()} class weights for {logits.shape[1]} classes")

    def _pixel_weights(self, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Weight of each pixel's true class (1 without class weights), 0 on ignored pixels."""
        safe = torch.where(valid, target, 0)
        w = self.weight[safe] if self.weight is not None else torch.ones_like(target, dtype=torch.float32)
        return w * valid


class CrossEntropyLoss(_PixelLoss):
    """Cross-entropy with ``ignore_index``, class weights and optional label smoothing."""

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        weight: Sequence[float] | torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(ignore_index=ignore_index, weight=weight)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits, target)
        if not (target != self.ignore_index).any():
            # torch's mean over zero pixels is 0/0; a crop of pure void should just not train.
            return logits.sum() * 0
        return F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing
        )


class OhemCrossEntropyLoss(_PixelLoss):
    """Online hard example mining (as PSPNet's and OCNet's Cityscapes recipes): CE over the hard pixels only.

    A pixel is hard when the probability of its true class is below ``threshold``; at
    least ``min_kept`` pixels (the hardest) are always kept, so an easy batch still trains.
    """

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        weight: Sequence[float] | torch.Tensor | None = None,
        threshold: float = 0.7,
        min_kept: int = 100_000,
    ) -> None:
        super().__init__(ignore_index=ignore_index, weight=weight)
        if not 0.0 < threshold <= 1.0 or min_kept < 0:
            raise ValueError(f"need 0 < threshold <= 1 and min_kept >= 0, got {threshold} and {min_kept}")
        self.threshold = threshold
        self.min_kept = min_kept

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits, target)
        valid = target != self.ignore_index
        nll = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        hard = valid & (nll > -torch.log(torch.tensor(self.threshold)))
        kept = min(self.min_kept, int(valid.sum()))
        if int(hard.sum()) < kept:
            # Too few pixels below the threshold: keep the `kept` largest losses instead.
            cutoff = torch.topk(nll[valid], kept).values[-1]
            hard = valid & (nll >= cutoff)
        w = self._pixel_weights(target, hard)
        return (w * nll).sum() / w.sum().clamp_min(1e-12)


class FocalLoss(_PixelLoss):
    """Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002): ``-(1 - p_t)^gamma log p_t``.

    Class weights play the role of the paper's ``alpha``; ``gamma = 0`` is cross-entropy.
    """

    def __init__(
        self, *, ignore_index: int = 255, weight: Sequence[float] | torch.Tensor | None = None, gamma: float = 2.0
    ) -> None:
        super().__init__(ignore_index=ignore_index, weight=weight)
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits, target)
        valid = target != self.ignore_index
        nll = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        focal = (1 - torch.exp(-nll)) ** self.gamma * nll
        w = self._pixel_weights(target, valid)
        return (w * focal).sum() / w.sum().clamp_min(1e-12)


def _valid_probs_and_onehot(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and one-hot targets as ``(C, P)`` over the P non-ignored pixels."""
    num_classes = logits.shape[1]
    probs = logits.softmax(1).permute(1, 0, 2, 3).reshape(num_classes, -1)
    flat = target.reshape(-1)
    valid = flat != ignore_index
    onehot = F.one_hot(flat[valid], num_classes).T.to(probs.dtype)
    return probs[:, valid], onehot


class DiceLoss(_PixelLoss):
    """Soft Dice loss (Milletari et al. 2016): ``1 - (2|P∩G| + s) / (|P| + |G| + s)`` per class, then averaged.

    Computed over the whole batch per class; the class average is weighted by the class
    weights. ``smooth`` keeps classes absent from a batch from dividing by zero.
    """

    def __init__(
        self, *, ignore_index: int = 255, weight: Sequence[float] | torch.Tensor | None = None, smooth: float = 1.0
    ) -> None:
        super().__init__(ignore_index=ignore_index, weight=weight)
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits, target)
        probs, onehot = _valid_probs_and_onehot(logits, target, self.ignore_index)
        inter = (probs * onehot).sum(1)
        dice = (2 * inter + self.smooth) / (probs.sum(1) + onehot.sum(1) + self.smooth)
        w = self.weight if self.weight is not None else torch.ones_like(dice)
        return (w * (1 - dice)).sum() / w.sum()


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted descending (Berman et al., Alg. 1)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


class LovaszSoftmaxLoss(_PixelLoss):
    """Lovász-softmax (Berman, Triki and Blaschko, CVPR 2018, https://arxiv.org/abs/1705.08790).

    A convex surrogate that optimises the IoU itself. Averaged over the classes present in
    the batch's (non-ignored) targets, weighted by the class weights.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._check(logits, target)
        probs, onehot = _valid_probs_and_onehot(logits, target, self.ignore_index)
        losses, weights = [], []
        for c in range(probs.shape[0]):
            if onehot[c].sum() == 0:
                continue
            errors = (onehot[c] - probs[c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            losses.append(torch.dot(errors_sorted, _lovasz_grad(onehot[c][order])))
            weights.append(self.weight[c] if self.weight is not None else probs.new_tensor(1.0))
        if not losses:  # every pixel ignored
            return logits.sum() * 0
        w = torch.stack(weights)
        return (w * torch.stack(losses)).sum() / w.sum()


class DistillationLoss(nn.Module):
    """KL(teacher || student) of temperature-softened class probabilities, per pixel, times the
    temperature squared (Hinton et al. 2015, arXiv:1503.02531), averaged over labelled pixels.

    Pixels labelled ``ignore_index`` are left out, as in every other loss here: void has no
    right class, so there is nothing for the teacher to teach. Computed in float32 whatever
    the autocast, since the difference of two log-probabilities loses its digits in bf16.
    """

    def __init__(self, *, temperature: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.ignore_index = temperature, ignore_index

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape or target.shape != (student.shape[0], *student.shape[2:]):
            raise ValueError(f"expected student and teacher logits (N, C, H, W) of one shape and target (N, H, W), got "
                             f"{tuple(student.shape)}, {tuple(teacher.shape)} and {tuple(target.shape)}")  # fmt: skip
        t = self.temperature
        log_student = F.log_softmax(student.float() / t, dim=1)
        log_teacher = F.log_softmax(teacher.float() / t, dim=1)
        kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
        valid = target != self.ignore_index
        return (kl * valid).sum() / valid.sum().clamp(min=1) * t * t


class WeightedSum(nn.Module):
    """``sum_i weight_i * loss_i(logits, target)``, e.g. cross-entropy + 0.5 Dice."""

    def __init__(self, terms: Sequence[tuple[nn.Module, float]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one (loss, weight) term")
        self.losses = nn.ModuleList(loss for loss, _ in terms)
        self.weights = [float(w) for _, w in terms]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(logits, target) for loss, w in zip(self.losses, self.weights))
