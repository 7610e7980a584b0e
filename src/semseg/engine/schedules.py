"""Learning-rate schedules of the segmentation papers, stepped once per iteration."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def _warmup_factor(step: int, warmup_steps: int, warmup_ratio: float) -> float:
    """Linear ramp from ``warmup_ratio`` to 1 over ``warmup_steps`` (1 afterwards)."""
    if step >= warmup_steps:
        return 1.0
    return warmup_ratio + (1 - warmup_ratio) * step / warmup_steps


def poly_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.1,
) -> LambdaLR:
    """"Poly" decay ``lr * (1 - step / total_steps) ** power`` (DeepLab, PSPNet), after a linear warm-up.

    The warm-up multiplies the poly factor, so the schedule is continuous where the
    warm-up ends.
    """
    _check(total_steps, warmup_steps)

    def factor(step: int) -> float:
        progress = min(step, total_steps) / total_steps
        return (1 - progress) ** power * _warmup_factor(step, warmup_steps, warmup_ratio)

    return LambdaLR(optimizer, factor)


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.1,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """Cosine decay from ``lr`` to ``min_ratio * lr`` over ``total_steps``, after a linear warm-up (for AdamW)."""
    _check(total_steps, warmup_steps)

    def factor(step: int) -> float:
        progress = min(step, total_steps) / total_steps
        cosine = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return cosine * _warmup_factor(step, warmup_steps, warmup_ratio)

    return LambdaLR(optimizer, factor)


def _check(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got {total_steps}, {warmup_steps}")
