"""The training step, written out: forward, loss (plus the weighted aux loss), backward, step.

Plain functions rather than a trainer class with hooks, so the loop can be read top to
bottom and these pieces can be called from anyone else's loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def training_loss(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    """Main loss plus ``model.aux_weight`` times the auxiliary-head loss, where the model has one."""
    outputs = model.forward_train(images)
    loss = loss_fn(outputs["out"], masks)
    if "aux" in outputs:
        loss = loss + model.aux_weight * loss_fn(outputs["aux"], masks)
    return loss


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str = "cpu",
    desc: str = "train",
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``batches``; steps ``scheduler`` once per batch.

    Returns the mean loss (weighted by batch size) and the throughput in images/s.
    """
    model.train()
    total, seen = 0.0, 0
    start = time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        loss = training_loss(model, images, masks, loss_fn)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at batch {seen // len(images)}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(images)
        seen += len(images)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", img_s=f"{seen / elapsed:.0f}")
    elapsed = time.perf_counter() - start
    return {"loss": total / max(seen, 1), "images_per_s": seen / elapsed if elapsed > 0 else 0.0}
