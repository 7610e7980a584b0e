"""The training step, written out: forward, loss (plus the weighted aux loss), backward, step.

Plain functions rather than a trainer class with hooks, so the loop can be read top to
bottom and these pieces can be called from anyone else's loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from semseg.engine import distributed
from semseg.engine.distill import Distiller
from semseg.progress import progress_bar

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainForward(nn.Module):
    """Makes ``forward`` return ``model.forward_train(x)`` (logits and aux logits).

    DistributedDataParallel synchronises gradients only for what goes through the wrapped
    module's ``forward``, so the training outputs must come from ``forward``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_train(x)


def training_loss(
    outputs: dict[str, torch.Tensor], masks: torch.Tensor, loss_fn: LossFn, aux_weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """Main loss plus, for each auxiliary output named in ``aux_weights``, its weight times its loss."""
    loss = loss_fn(outputs["out"], masks)
    for key, weight in (aux_weights or {}).items():
        if key in outputs:
            loss = loss + weight * loss_fn(outputs[key], masks)
    return loss


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``amp`` = "none" | "bf16" | "fp16".

    fp16 needs a GradScaler (its gradients underflow without one); it works on the CPU too,
    which is how the tests exercise that path, but is only fast on GPUs and CPUs with fp16 units.
    """
    device_type = torch.device(device).type
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str = "cpu",
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    grad_accum: int = 1,
    clip_grad_norm: float | None = None,
    max_nonfinite: int = 10,
    desc: str = "train",
    progress: bool = True,
    channels_last: bool = False,
    on_step: Callable[[], None] | None = None,
    distill: Distiller | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; an optimizer (and ``scheduler``) step every ``grad_accum`` batches.

    ``model`` is a :class:`SegmentationModel`, or a :class:`TrainForward` (possibly inside
    DistributedDataParallel) around one. A batch whose loss is not finite is skipped and
    counted — on every process at once when any process's loss is not finite; ``max_nonfinite``
    of them in a row stop training with ``FloatingPointError``.
    Returns the mean loss of the finite batches, images/s and the number skipped.
    ``channels_last`` feeds batches in NHWC order, for a model converted to it. ``on_step`` runs
    after every optimizer step (e.g. to update an average of the weights). ``distill`` adds a
    teacher's term to every batch's loss (:mod:`semseg.engine.distill`); its mean is also
    returned alone as ``distill_loss`` (the ``loss`` includes it).
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = model if isinstance(model, (TrainForward, DistributedDataParallel)) else TrainForward(model)
    model = (net.module if isinstance(net, DistributedDataParallel) else net).model
    aux_weights = getattr(model, "aux_weights", {"aux": model.aux_weight})
    net.train()
    total, distilled, seen, skipped, in_a_row = 0.0, 0.0, 0, 0, 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    bar = progress_bar(batches, desc=desc, leave=False, enabled=progress)
    for i, (images, masks) in enumerate(bar):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        step_now = (i + 1) % grad_accum == 0
        # Micro-batches before the step accumulate locally: DDP all-reduces gradients only on the last.
        sync = contextlib.nullcontext() if step_now or not isinstance(net, DistributedDataParallel) else net.no_sync()
        with sync:
            with autocast(device, amp):
                # The teacher first: its activations are freed before the student's graph is built.
                targets = None if distill is None else distill.teacher_logits(images)
                outputs = net(images)
                loss = training_loss(outputs, masks, loss_fn, aux_weights)
                if distill is not None:
                    term = distill(outputs["out"], targets, masks)
                    loss = loss + term
            # Every process skips together, or the ones that do backward wait forever in its all-reduce.
            finite = distributed.all_true(bool(torch.isfinite(loss)), loss.device)
            if finite:
                scaled = loss / grad_accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if not finite:
            skipped += 1
            in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            if in_a_row >= max_nonfinite:
                raise FloatingPointError(
                    f"the loss was not finite for {in_a_row} batches in a row (last: {loss.item()}); "
                    "lower the learning rate, enable clip_grad_norm, or check the data for corrupt labels"
                )
            continue
        in_a_row = 0
        if step_now:
            _step(net, optimizer, scaler, clip_grad_norm)
            if scheduler is not None:
                scheduler.step()
            if on_step is not None:
                on_step()
        total += loss.item() * len(images)
        distilled += 0.0 if distill is None else term.item() * len(images)
        seen += len(images)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{total / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", img_s=f"{seen / elapsed:.0f}")
    if seen == 0 and skipped:  # fewer batches than max_nonfinite, all of them lost: the weights are likely NaN
        raise FloatingPointError(
            f"the loss was not finite for every batch of the epoch ({skipped}; last: {loss.item()}); "
            "lower the learning rate, enable clip_grad_norm, or check the data for corrupt labels"
        )
    elapsed = time.perf_counter() - start
    stats = {"loss": total / max(seen, 1), "images_per_s": seen / elapsed if elapsed > 0 else 0.0, "skipped": skipped}
    return stats if distill is None else {**stats, "distill_loss": distilled / max(seen, 1)}


def _step(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, clip: float | None) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
