"""Knowledge distillation: a small student learns from a trained teacher's per-pixel probabilities.

``distill.teacher`` in a recipe names a semseg checkpoint or a shipped model. The teacher is
loaded once, frozen and kept in eval mode; it sees the student's own training crops (its
input re-normalised if its mean/std differ from the dataset's) and its logits feed
:class:`~semseg.losses.DistillationLoss`, added to the main loss with ``distill.weight``.
Only the student is trained, averaged, validated and saved. The teacher file's SHA-256 is
kept in the training state, so ``--resume`` refuses a teacher that changed under the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from semseg.config import ConfigError, DistillConfig
from semseg.engine.checkpoint import load_model, sha256
from semseg.losses import DistillationLoss
from semseg.pretrained import resolve_checkpoint


class Distiller(nn.Module):
    """``weight`` x KL(teacher || student) for a batch: ``distiller(images, student_logits, masks)``."""

    def __init__(self, teacher: nn.Module, *, weight: float, temperature: float, ignore_index: int,
                 scale: Sequence[float] | None = None, shift: Sequence[float] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = weight
        self.loss = DistillationLoss(temperature=temperature, ignore_index=ignore_index)
        # The teacher's normalisation from the dataset's: x_teacher = x * scale + shift, per channel.
        affine = scale is not None and shift is not None
        self.register_buffer("scale", torch.tensor(scale).view(1, -1, 1, 1) if affine else None)
        self.register_buffer("shift", torch.tensor(shift).view(1, -1, 1, 1) if affine else None)
        self.sha256: str | None = None  # of the teacher's file, when loaded from one

    def train(self, mode: bool = True) -> Distiller:
        """The teacher stays in eval mode (frozen BatchNorm statistics) whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            images = images * self.scale + self.shift
        return self.teacher(images)

    def forward(self, images: torch.Tensor, student_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(student_logits, self.teacher_logits(images), masks)


def build_distiller(config: DistillConfig, *, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
                    ignore_index: int) -> Distiller:  # fmt: skip
    """The teacher ``config.teacher`` names, checked against the student's data: same classes in
    the same order and the same number of input channels."""
    path = resolve_checkpoint(config.teacher)
    if not Path(path).is_file():
        raise ConfigError(f"distill.teacher: {path} does not exist; give a semseg checkpoint or a shipped model's "
                          "name (semseg pretrained)")  # fmt: skip
    teacher, meta = load_model(path)
    if list(meta["classes"]) != list(classes):
        raise ConfigError(f"distill.teacher {config.teacher} predicts classes {meta['classes']}, the dataset has "
                          f"{list(classes)}; a teacher must be trained on the same classes in the same order")  # fmt: skip
    if len(meta["mean"]) != len(mean):
        raise ConfigError(f"distill.teacher {config.teacher} takes {len(meta['mean'])}-channel images, the dataset's "
                          f"have {len(mean)}")  # fmt: skip
    same = list(meta["mean"]) == list(mean) and list(meta["std"]) == list(std)
    scale = None if same else [s / ts for s, ts in zip(std, meta["std"], strict=True)]
    shift = None if same else [(m - tm) / ts for m, tm, ts in zip(mean, meta["mean"], meta["std"], strict=True)]
    distiller = Distiller(teacher, weight=config.weight, temperature=config.temperature, ignore_index=ignore_index,
                          scale=scale, shift=shift)  # fmt: skip
    distiller.sha256 = sha256(path)
    return distiller
