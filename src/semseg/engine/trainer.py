"""``semseg train``: a config in, checkpoints, logs and curves out — one process or many under torchrun.

:func:`fit` reads top to bottom: data, model, loss, optimizer and schedule, then for every
epoch train, evaluate, log and checkpoint. Checkpoints (``last`` every epoch, ``best`` by
validation mIoU) are self-describing weight files plus a training-state file, so
``fit(config, resume=True)`` continues exactly where the last epoch ended: the same
weights as a run that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from semseg import __version__
from semseg.config import ConfigError, TrainConfig
from semseg.engine import distributed
from semseg.engine.checkpoint import load_training_state, read_metadata, save_training_state, save_weights
from semseg.engine.datasets import DatasetBundle, build_datasets
from semseg.engine.evaluate import confusion_matrix
from semseg.engine.schedules import cosine_schedule, poly_schedule
from semseg.engine.train import TrainForward, train_one_epoch
from semseg.losses import CrossEntropyLoss, DiceLoss, FocalLoss, LovaszSoftmaxLoss, OhemCrossEntropyLoss, WeightedSum
from semseg.metrics import metrics_from_confusion
from semseg.registry import create_model
from semseg.visualize import plot_curves

_LOSSES = {"ce": CrossEntropyLoss, "ohem": OhemCrossEntropyLoss, "focal": FocalLoss, "dice": DiceLoss,
           "lovasz": LovaszSoftmaxLoss}  # fmt: skip


def fit(
    config: TrainConfig, *, resume: bool = False, stop_after: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train and evaluate as ``config`` says; returns the last epoch's validation metrics and the history.

    ``stop_after`` ends this run after that many epochs (e.g. to fit a time slot); a later
    ``resume=True`` run carries on with the same schedule, as if never stopped.
    """
    dist = distributed.setup(config.device)
    try:
        return _fit(config, dist, resume=resume, stop_after=stop_after, progress=progress and dist.is_main)
    finally:
        distributed.teardown()


def _fit(
    config: TrainConfig, dist: distributed.DistInfo, *, resume: bool, stop_after: int | None, progress: bool
) -> dict[str, Any]:
    out = Path(config.out)
    summary_writer = _summary_writer_class(config)  # before any work: fails if asked for but not installed
    torch.manual_seed(config.seed)  # same initial weights on every rank
    data = build_datasets(config)
    model = create_model(config.model.name, num_classes=len(data.classes), **config.model.options).to(dist.device)
    net: nn.Module = TrainForward(model)
    if dist.world_size > 1:
        if config.sync_bn:
            if dist.device.type != "cuda":
                raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); "
                                 "set sync_bn: false for CPU training")  # fmt: skip
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    loss_fn = build_loss(config, len(data.classes)).to(dist.device)

    # Every process, however many there are, draws the same permutation each epoch and
    # takes its share: with the same global batch the run is the same as one process.
    sampler = DistributedSampler(data.train, num_replicas=dist.world_size, rank=dist.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)  # fmt: skip
    per_rank = config.data.batch_size // dist.world_size
    if per_rank * dist.world_size != config.data.batch_size:
        raise ValueError(f"data.batch_size {config.data.batch_size} must divide by the {dist.world_size} processes")
    loader_rng = torch.Generator()
    train_loader = DataLoader(data.train, batch_size=per_rank, sampler=sampler, num_workers=config.data.workers,
                              drop_last=True, generator=loader_rng, persistent_workers=False)  # fmt: skip
    val_part = Subset(data.val, range(dist.rank, len(data.val), dist.world_size))  # no padding: each image once
    val_loader = DataLoader(val_part, batch_size=config.data.val_batch_size, num_workers=config.data.workers)

    optimizer = build_optimizer(config, model)
    steps_per_epoch = len(train_loader) // config.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"{len(data.train)} training images give no optimizer step at batch size "
                         f"{config.data.batch_size} x grad_accum {config.grad_accum}")
    scheduler = build_schedule(config, optimizer, total_steps=steps_per_epoch * config.epochs)
    scaler = torch.amp.GradScaler(dist.device.type) if config.amp == "fp16" else None

    start_epoch, history, best, metrics = 0, [], -math.inf, {}
    if resume:
        start_epoch, history, best = _restore(out, model, optimizer, scheduler, scaler)
    metadata = _metadata(config, data)
    end_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    # Closed (so flushed) however the loop ends: finished, stop_after, or an exception.
    with _open_tensorboard(summary_writer, out, dist) as tensorboard:
        for epoch in range(start_epoch, end_epoch):
            sampler.set_epoch(epoch)
            loader_rng.manual_seed(config.seed * 100_003 + epoch)
            transform = getattr(data.train, "transform", None)
            if hasattr(transform, "reseed"):
                transform.reseed(config.seed * 100_003 + epoch)
            stats = train_one_epoch(
                net, train_loader, optimizer, loss_fn, scheduler=scheduler, device=dist.device, amp=config.amp,
                scaler=scaler, grad_accum=config.grad_accum, clip_grad_norm=config.clip_grad_norm,
                max_nonfinite=config.max_nonfinite, desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress,
            )  # fmt: skip
            metrics = _evaluate(model, val_loader, data, dist, progress)
            record = {"epoch": epoch + 1, "train_loss": stats["loss"], "val_mIoU": metrics["mIoU"],
                      "lr": optimizer.param_groups[0]["lr"], "images_per_s": stats["images_per_s"] * dist.world_size,
                      "skipped_batches": stats["skipped"]}  # fmt: skip
            history.append(record)
            if dist.is_main:
                _log(out, {**record, "val": metrics}, progress, tensorboard)
                is_best = metrics["mIoU"] > best
                best = max(best, metrics["mIoU"])
                meta = {**metadata, "epoch": epoch + 1, "metrics": metrics}
                # Training state first: a crash between the two writes leaves an older state
                # beside newer weights, which _restore detects, never the reverse.
                state = _state(epoch + 1, history, best, optimizer, scheduler, scaler)
                save_training_state(out / "last.state.pt", state)
                save_weights(model, out / "last.safetensors", **meta)
                if is_best:
                    save_weights(model, out / "best.safetensors", **meta)
            distributed.barrier()
    if dist.is_main and history:
        plot_curves([{k: h[k] for k in ("epoch", "train_loss", "val_mIoU")} for h in history], out / "curves.png")
    return {**metrics, "history": history, "best_mIoU": best}


def build_loss(config: TrainConfig, num_classes: int) -> nn.Module:
    """The configured loss (with class weights and ignore index), plus Dice if ``loss.dice_weight`` > 0."""
    cfg = config.loss
    if cfg.class_weights is not None and len(cfg.class_weights) != num_classes:
        raise ValueError(f"loss.class_weights has {len(cfg.class_weights)} values for {num_classes} classes")
    common = {"ignore_index": config.ignore_index, "weight": cfg.class_weights}
    main = CrossEntropyLoss(label_smoothing=cfg.label_smoothing, **common) if cfg.name == "ce" else _LOSSES[cfg.name](**common)
    if cfg.dice_weight > 0:
        return WeightedSum([(main, 1.0), (DiceLoss(**common), cfg.dice_weight)])
    return main


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the papers) or AdamW; no weight decay on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum)
    return torch.optim.AdamW(groups, lr=config.optim.lr)


def build_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, *, total_steps: int):
    """Poly (power ``optim.power``), cosine or constant LR over ``total_steps``, after ``optim.warmup_steps``."""
    warmup = min(config.optim.warmup_steps, total_steps - 1)
    if config.optim.schedule == "poly":
        return poly_schedule(optimizer, total_steps=total_steps, power=config.optim.power, warmup_steps=warmup)
    if config.optim.schedule == "cosine":
        return cosine_schedule(optimizer, total_steps=total_steps, warmup_steps=warmup)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _evaluate(model: nn.Module, loader: DataLoader, data: DatasetBundle, dist: distributed.DistInfo,
              progress: bool) -> dict[str, Any]:  # fmt: skip
    """Each rank scores its share of the validation set; the confusion matrices are summed."""
    local = confusion_matrix(model, loader, num_classes=len(data.classes), ignore_index=data.ignore_index,
                             device=dist.device, progress=progress)  # fmt: skip
    confusion = distributed.all_reduce_sum(local.to(dist.device)).cpu()
    return metrics_from_confusion(confusion, data.classes)


def _metadata(config: TrainConfig, data: DatasetBundle) -> dict[str, Any]:
    """What a predictor needs besides the weights: classes, colours, normalisation, and how it was made."""
    return {"classes": list(data.classes), "palette": [list(c) for c in data.palette], "mean": list(data.mean),
            "std": list(data.std), "ignore_index": data.ignore_index, "config": config.to_dict(),
            "semseg_version": __version__}  # fmt: skip


def _state(epoch, history, best, optimizer, scheduler, scaler) -> dict[str, Any]:
    return {
        "epoch": epoch, "history": history, "best_mIoU": best,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
                "numpy_pos": int(np.random.get_state()[2]), "python": random.getstate()[1]},
    }  # fmt: skip


def _restore(out: Path, model, optimizer, scheduler, scaler) -> tuple[int, list, float]:
    """Load ``last.*`` from ``out``; returns (epochs done, history, best mIoU)."""
    weights, state_path = out / "last.safetensors", out / "last.state.pt"
    if not weights.is_file() or not state_path.is_file():
        raise FileNotFoundError(f"cannot resume: {weights} and {state_path} must both exist (train without resume first)")
    state = load_training_state(state_path)
    if read_metadata(weights)["epoch"] != state["epoch"]:
        raise ValueError(f"{weights} and {state_path} are from different epochs (a crash between writes?); "
                         "delete both to restart, or restore them from a backup")  # fmt: skip
    model.load_state_dict(load_file(str(weights)))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(rng["python"]), None))
    return state["epoch"], list(state["history"]), state["best_mIoU"]


def _summary_writer_class(config: TrainConfig) -> type | None:
    """TensorBoard's ``SummaryWriter`` if ``config.tensorboard`` asks for it; an optional dependency."""
    if not config.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError('tensorboard: true needs the tensorboard package: pip install "semseg[tensorboard]" '
                          "(or set tensorboard: false)") from None  # fmt: skip
    return SummaryWriter


def _open_tensorboard(summary_writer: type | None, out: Path, dist: distributed.DistInfo):
    """A writer on ``out/tensorboard/`` in the main process when enabled, else a context giving None."""
    if summary_writer is None or not dist.is_main:
        return contextlib.nullcontext()
    return summary_writer(log_dir=str(out / "tensorboard"))


def _tensorboard_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard tag and value of every number in a ``log.jsonl`` record.

    Tags are grouped as TensorBoard shows them: ``train/*``, ``val/*``, and one group per
    per-class metric (``val_IoU/<class>``, ``val_accuracy/<class>``, ``val_dice/<class>``).
    """
    train = {"loss": "train_loss", "lr": "lr", "images_per_s": "images_per_s", "skipped_batches": "skipped_batches"}
    scalars = {f"train/{tag}": record[key] for tag, key in train.items()}
    for key, value in record["val"].items():
        if isinstance(value, dict):
            scalars.update({f"val_{key.removeprefix('per_class_')}/{name}": v for name, v in value.items()})
        else:
            scalars[f"val/{key}"] = value
    return scalars


def _log(out: Path, record: dict[str, Any], progress: bool, tensorboard: Any = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if tensorboard is not None:
        for tag, value in _tensorboard_scalars(record).items():
            tensorboard.add_scalar(tag, value, global_step=record["epoch"])
        tensorboard.flush()  # a live TensorBoard sees each epoch as it ends; a killed run keeps it
    if progress:
        print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  val mIoU {record['val_mIoU']:.4f}  "
              f"lr {record['lr']:.2e}  {record['images_per_s']:.1f} img/s", flush=True)
