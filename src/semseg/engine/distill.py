"""Knowledge distillation: a small student learns from a trained teacher's per-pixel probabilities.

``distill.teacher`` in a recipe names a semseg checkpoint or a shipped model. The teacher is
loaded once, frozen and kept in eval mode; it sees the student's own training crops (its
input re-normalised if its mean/std differ from the dataset's) and its logits feed
:class:`~semseg.losses.DistillationLoss`, added to the main loss with ``distill.weight``.
Only the student is trained, averaged, validated and saved. The teacher file's SHA-256, the
weight and the temperature are kept in the training state (:attr:`Distiller.identity`), so
``--resume`` refuses a run whose teacher or distillation settings changed under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semseg.config import ConfigError, DistillConfig, TrainConfig
from semseg.engine.checkpoint import load_model, sha256
from semseg.engine.datasets import DatasetBundle
from semseg.losses import DistillationLoss
from semseg.pretrained import resolve_checkpoint


class Distiller(nn.Module):
    """A frozen teacher and the weighted distillation term it gives a student.

    ``targets = distiller.teacher_logits(images)`` first (no graph is kept), then
    ``distiller(student_logits, targets, masks)``: ``weight`` times
    :class:`~semseg.losses.DistillationLoss` (KL at the temperature, times its square, over labelled pixels).
    """

    def __init__(self, teacher: nn.Module, *, weight: float, temperature: float, ignore_index: int,
                 scale: Sequence[float] | None = None, shift: Sequence[float] | None = None,
                 sha256: str | None = None) -> None:  # fmt: skip
        super().__init__()
        if (scale is None) != (shift is None):
            raise ValueError("give both scale and shift (the dataset-to-teacher normalisation) or neither")
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = weight
        self.loss = DistillationLoss(temperature=temperature, ignore_index=ignore_index)
        # The teacher's normalisation from the dataset's: x_teacher = x * scale + shift, per channel.
        self.register_buffer("scale", None if scale is None else torch.tensor(scale).view(1, -1, 1, 1))
        self.register_buffer("shift", None if shift is None else torch.tensor(shift).view(1, -1, 1, 1))
        self.sha256 = sha256  # of the teacher's file, when loaded from one

    @property
    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        return {"teacher_sha256": self.sha256, "weight": self.weight, "temperature": self.loss.temperature}

    def train(self, mode: bool = True) -> Distiller:
        """The teacher stays in eval mode (frozen BatchNorm statistics) whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            images = images * self.scale + self.shift
        return self.teacher(images)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(student_logits, teacher_logits, masks)


def build_distiller(config: DistillConfig, *, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
                    bands: int | None, ignore_index: int) -> Distiller:  # fmt: skip
    """The teacher ``config.teacher`` names, checked against the student's data: the same classes
    in the same order and the same input (8-bit RGB, or the same number of full-precision bands)."""
    try:
        path = resolve_checkpoint(config.teacher)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is not a file")
        teacher, meta = load_model(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"distill.teacher: {exc}; give a semseg checkpoint or a shipped model's name "
                          "(semseg pretrained)") from None  # fmt: skip
    if list(meta["classes"]) != list(classes):
        raise ConfigError(f"distill.teacher {config.teacher} predicts classes {meta['classes']}, the dataset has "
                          f"{list(classes)}; a teacher must be trained on the same classes in the same order")  # fmt: skip
    if meta.get("bands") != bands or len(meta["mean"]) != len(mean):
        def what(b: int | None, n: int) -> str:
            return f"{n}-channel 8-bit images" if b is None else f"{b} full-precision bands"

        raise ConfigError(f"distill.teacher {config.teacher} takes {what(meta.get('bands'), len(meta['mean']))}, the "
                          f"dataset gives {what(bands, len(mean))}; a teacher must read the student's input")  # fmt: skip
    same = list(meta["mean"]) == list(mean) and list(meta["std"]) == list(std)
    scale = None if same else [s / ts for s, ts in zip(std, meta["std"], strict=True)]
    shift = None if same else [(m - tm) / ts for m, tm, ts in zip(mean, meta["mean"], meta["std"], strict=True)]
    return Distiller(teacher, weight=config.weight, temperature=config.temperature, ignore_index=ignore_index,
                     scale=scale, shift=shift, sha256=sha256(path))  # fmt: skip


def training_distiller(config: TrainConfig, data: DatasetBundle, device: torch.device | str = "cpu") -> Distiller | None:
    """The distiller a recipe trains with (None without ``distill.teacher``): checked against
    ``data``, on ``device`` and in the recipe's memory format."""
    if config.distill.teacher is None:
        return None
    distiller = build_distiller(config.distill, classes=data.classes, mean=data.mean, std=data.std, bands=data.bands,
                                ignore_index=data.ignore_index).to(device)  # fmt: skip
    return distiller.to(memory_format=torch.channels_last) if config.channels_last else distiller
