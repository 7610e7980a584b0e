"""``semseg train``: a config in, checkpoints, logs and curves out — one process or many under torchrun.

:func:`fit` reads top to bottom: data, model, loss, optimizer and schedule, then for every
epoch train, evaluate, log and checkpoint. Checkpoints (``last`` every epoch, ``best`` by
validation mIoU) are self-describing weight files plus a training-state file, so
``fit(config, resume=True)`` continues exactly where the last epoch ended: the same
weights as a run that never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, default_collate

from semseg import __version__
from semseg.config import ConfigError, TrainConfig
from semseg.data.base import DataError
from semseg.engine import distributed, run_folder
from semseg.engine.checkpoint import load_training_state, read_metadata
from semseg.engine.datasets import DatasetBundle, build_datasets
from semseg.engine.distill import Distiller, training_distiller
from semseg.engine.evaluate import confusion_matrix
from semseg.engine.init_from import init_from
from semseg.engine.schedules import cosine_schedule, poly_schedule
from semseg.engine.train import TrainForward, train_one_epoch
from semseg.losses import CrossEntropyLoss, DiceLoss, FocalLoss, LovaszSoftmaxLoss, OhemCrossEntropyLoss, WeightedSum
from semseg.metrics import metrics_from_confusion
from semseg.registry import WEIGHT_FILE_OPTIONS, create_model
from semseg.typecheck import OptionError, check_options
from semseg.visualize import plot_curves

_LOSSES = {"ce": CrossEntropyLoss, "ohem": OhemCrossEntropyLoss, "focal": FocalLoss, "dice": DiceLoss,
           "lovasz": LovaszSoftmaxLoss}  # fmt: skip


def fit(
    config: TrainConfig, *, resume: bool = False, overwrite: bool = False, stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate as ``config`` says; returns the last epoch's validation metrics and the history.

    ``stop_after`` ends this run after that many epochs (e.g. to fit a time slot); a later
    ``resume=True`` run carries on with the same schedule, as if never stopped. A fresh run
    refuses an ``out`` folder that holds an earlier run unless ``overwrite`` is set.
    """
    try:
        dist = distributed.setup(config.device, timeout_s=config.dist_timeout_s)
    except ValueError as exc:
        raise ConfigError(f"device: {exc} (device: auto picks one)") from None
    try:
        return _fit(config, dist, resume=resume, overwrite=overwrite, stop_after=stop_after,
                    progress=progress and dist.is_main)  # fmt: skip
    finally:
        distributed.teardown()


def _fit(
    config: TrainConfig, dist: distributed.DistInfo, *, resume: bool, overwrite: bool, stop_after: int | None,
    progress: bool,
) -> dict[str, Any]:
    out = Path(config.out)
    summary_writer = _summary_writer_class(config)  # before any work: fails if asked for but not installed
    if resume:  # before the data are decoded and the model built
        _check_same_recipe(out, config)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    data = build_datasets(config)
    in_channels = config.model.options.get("in_channels", data.channels)
    if in_channels != data.channels:
        raise ConfigError(f"model.options.in_channels is {in_channels} but the dataset's images have "
                          f"{data.channels} channel(s); drop the option (it follows the data) or set it to {data.channels}")  # fmt: skip
    try:
        options = {**config.model.options, "in_channels": in_channels} if data.channels != 3 else config.model.options
        model = create_model(config.model.name, num_classes=len(data.classes), **options)
    except OptionError as exc:
        raise ConfigError(f"model.options: {exc}") from None
    if config.model.init_from is not None and not resume:  # a resumed run has its own weights
        report = init_from(model, config.model.init_from)
        if dist.is_main:
            print(report.describe(config.model.init_from), flush=True)
    model = model.to(dist.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The average lives beside the trained model: validation and checkpoints use it, training never does.
    average = warmed_up_ema(config.ema) if config.ema_warmup else get_ema_multi_avg_fn(config.ema)
    ema = None if not config.ema else AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    net: nn.Module = TrainForward(model)
    if dist.world_size > 1:
        if config.sync_bn:
            if dist.device.type != "cuda":
                raise ValueError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); "
                                 "set sync_bn: false for CPU training")  # fmt: skip
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    loss_fn = build_loss(config, len(data.classes)).to(dist.device)
    distiller = _distiller(config, data, dist)

    # Every process, however many there are, draws the same permutation each epoch and
    # takes its share: with the same global batch the run is the same as one process.
    train_set = data.train if config.repeats == 1 else Repeated(data.train, config.repeats)
    sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)  # fmt: skip
    per_rank = config.data.batch_size // dist.world_size
    if per_rank * dist.world_size != config.data.batch_size:
        raise ValueError(f"data.batch_size {config.data.batch_size} must divide by the {dist.world_size} processes")
    loader_rng = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler, num_workers=config.data.workers,
                              drop_last=True, generator=loader_rng, persistent_workers=False,
                              collate_fn=functools.partial(collate_same_size, fix=_TRAIN_SIZE_FIX))  # fmt: skip
    val_part = Subset(data.val, range(dist.rank, len(data.val), dist.world_size))  # no padding: each image once
    val_loader = DataLoader(val_part, batch_size=config.data.val_batch_size, num_workers=config.data.workers,
                            collate_fn=functools.partial(collate_same_size, fix=_VAL_SIZE_FIX))  # fmt: skip

    optimizer = build_optimizer(config, model)
    steps_per_epoch = len(train_loader) // config.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_set)} training samples give no optimizer step at batch size "
                         f"{config.data.batch_size} x grad_accum {config.grad_accum}")
    scheduler = build_schedule(config, optimizer, total_steps=steps_per_epoch * config.epochs)
    scaler = torch.amp.GradScaler(dist.device.type) if config.amp == "fp16" else None

    start_epoch, history, best, metrics = 0, [], -math.inf, {}
    if dist.is_main:
        run_folder.prepare(out, resume=resume, overwrite=overwrite)
    distributed.barrier()
    if resume:
        start_epoch, history, best = _restore(out, list(data.classes), model, optimizer, scheduler, scaler,
                                              dist, ema, distill=None if distiller is None else distiller.identity)  # fmt: skip
    metadata = _metadata(config, data)
    if distiller is not None:  # which file taught it, beyond the name or path in the config
        metadata["distill_teacher_sha256"] = distiller.sha256
    end_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
    # Closed (so flushed) however the loop ends: finished, stop_after, or an exception.
    with _open_tensorboard(summary_writer, out, dist) as tensorboard:
        for epoch in range(start_epoch, end_epoch):
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            loader_rng.manual_seed(config.seed * 100_003 + epoch)
            transform = getattr(data.train, "transform", None)
            for reseeded in (transform, data.train):  # augmentations, and the windows of large rasters
                if hasattr(reseeded, "reseed"):
                    reseeded.reseed(config.seed * 100_003 + epoch)
            stats = train_one_epoch(
                net, train_loader, optimizer, loss_fn, scheduler=scheduler, device=dist.device, amp=config.amp,
                scaler=scaler, grad_accum=config.grad_accum, clip_grad_norm=config.clip_grad_norm,
                max_nonfinite=config.max_nonfinite, desc=f"epoch {epoch + 1}/{config.epochs}", progress=progress,
                channels_last=config.channels_last, on_step=None if ema is None else lambda: ema.update_parameters(model),
                distill=distiller,
            )  # fmt: skip
            scored = model if ema is None else ema.module  # what validation scores and the checkpoints hold
            _check_finite(scored, epoch + 1)
            validate = (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
            metrics = _evaluate(scored, val_loader, data, dist, progress, config.data.infer_scale) if validate else {}
            record = {"epoch": epoch + 1, "train_loss": stats["loss"], "val_mIoU": metrics.get("mIoU"),
                      "lr": optimizer.param_groups[0]["lr"], "images_per_s": stats["images_per_s"] * dist.world_size,
                      "skipped_batches": stats["skipped"]}  # fmt: skip
            if distiller is not None:  # part of train_loss, also logged alone to tune distill.weight by
                record["distill_loss"] = stats["distill_loss"]
            record.update(_wall_time(history, time.perf_counter() - started))
            history.append(record)
            if dist.is_main:
                _log(out, {**record, "val": metrics}, tensorboard)
                is_best = validate and metrics["mIoU"] > best
                best = max(best, metrics.get("mIoU", -math.inf))
                meta = {**metadata, "epoch": epoch + 1, "metrics": metrics}
                state = _state(epoch + 1, history, best, optimizer, scheduler, scaler)
                if ema is not None:  # the weights files hold the average; resuming needs the trained weights too
                    state["ema"] = {"trained_weights": model.state_dict(), "steps": int(ema.n_averaged)}
                if distiller is not None:
                    state["distill"] = distiller.identity
                run_folder.commit(out, scored, state, meta, is_best=is_best)
            distributed.barrier()
            if validate and math.isnan(metrics["mIoU"]):  # saved first: fixing the masks and --resume loses nothing
                raise ValueError(f"the {config.data.val_split!r} split has no labelled pixel to score (every mask pixel "
                                 f"is ignore_index {config.ignore_index}); epoch {epoch + 1} is saved in {out}/ but no "
                                 "best.safetensors can be chosen: fix the val masks (semseg data check) or set "
                                 "data.val_split to another split")  # fmt: skip
    if dist.is_main and history:
        plot_curves([{k: h[k] for k in ("epoch", "train_loss", "val_mIoU")} for h in history], out / "curves.png")
    return {**metrics, "history": history, "best_mIoU": best, "epochs_run": max(0, end_epoch - start_epoch)}


def warmed_up_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """An ``AveragedModel`` update whose decay at the n-th average is ``min(decay, (1 + n) / (10 + n))``.

    A fixed decay keeps the random initial weights in the average for thousands of steps
    (0.995: 16% of them after 360 steps); with BatchNorm statistics averaged alongside, a
    from-scratch LR-ASPP's average predicted one class for its first 10 epochs while the
    trained weights scored 0.35-0.48 (docs/benchmarks.md). The decay depends on the step count
    only, which the training state keeps, so resuming stays exact.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, num_averaged)

    return update


def _distiller(config: TrainConfig, data: DatasetBundle, dist: distributed.DistInfo) -> Distiller | None:
    """:func:`~semseg.engine.distill.training_distiller` on this process's device, announced once."""
    distiller = training_distiller(config, data, dist.device)
    if distiller is not None and dist.is_main:
        print(f"distill: teacher {config.distill.teacher} (sha256 {distiller.sha256[:12]}), weight "
              f"{config.distill.weight}, temperature {config.distill.temperature}", flush=True)  # fmt: skip
    return distiller


class Repeated(Dataset):
    """``dataset`` seen ``times`` times per epoch (index ``i`` is sample ``i % len(dataset)``).

    On a small dataset, longer epochs mean fewer validations and checkpoints per image seen.
    """

    def __init__(self, dataset: Dataset, times: int) -> None:
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index % len(self.dataset)]


def build_loss(config: TrainConfig, num_classes: int) -> nn.Module:
    """The configured loss (with class weights, ignore index and ``loss.options``), plus Dice if ``loss.dice_weight`` > 0."""
    cfg = config.loss
    if cfg.class_weights is not None and len(cfg.class_weights) != num_classes:
        raise ValueError(f"loss.class_weights has {len(cfg.class_weights)} values for {num_classes} classes")
    if cfg.label_smoothing and cfg.name != "ce":
        raise ConfigError(f"loss.label_smoothing applies to cross-entropy only, not to loss {cfg.name!r}; "
                          "remove it or use name: ce")  # fmt: skip
    common = {"ignore_index": config.ignore_index, "weight": cfg.class_weights}
    try:
        options = check_options(_LOSSES[cfg.name], cfg.options, what=f"loss {cfg.name!r}", prefix="loss.options.",
                                exclude={"ignore_index", "weight", "label_smoothing"})  # fmt: skip
    except OptionError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.name == "ce":
        options["label_smoothing"] = cfg.label_smoothing
    main = _LOSSES[cfg.name](**common, **options)
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
              progress: bool, scale: float) -> dict[str, Any]:  # fmt: skip
    """Each rank scores its share of the validation set (inputs resized by ``scale``); the confusion
    matrices are summed."""
    local = confusion_matrix(model, loader, num_classes=len(data.classes), ignore_index=data.ignore_index,
                             device=dist.device, progress=progress, scale=scale)  # fmt: skip
    confusion = distributed.all_reduce_sum(local.to(dist.device)).cpu()
    return metrics_from_confusion(confusion, data.classes)


def _metadata(config: TrainConfig, data: DatasetBundle) -> dict[str, Any]:
    """What a predictor needs besides the weights: classes, colours, normalisation, and how it was made."""
    return {"classes": list(data.classes), "palette": [list(c) for c in data.palette], "mean": list(data.mean),
            "std": list(data.std), "bands": data.bands, "ignore_index": data.ignore_index,
            "infer_scale": config.data.infer_scale, "config": config.to_dict(),
            "semseg_version": __version__}  # fmt: skip


def _state(epoch, history, best, optimizer, scheduler, scaler) -> dict[str, Any]:
    return {
        "epoch": epoch, "history": history, "best_mIoU": best,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
                "numpy_pos": int(np.random.get_state()[2]), "python": random.getstate()[1],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }  # fmt: skip


# Recipe keys a resumed run may change: where things are and how often to look, not what is trained.
# ``epochs`` may change (the schedule follows the new total from the next step); the dataset may move (its classes are checked).
# ``amp`` may change with the device (bf16 on a CPU that has it, none on one without): the weights stay fp32.
RESUMABLE_CHANGES = frozenset({
    "epochs", "out", "tensorboard", "device", "amp", "dist_timeout_s", "max_nonfinite", "val_every", "channels_last",
    "data.dataset", "data.root", "data.workers", "data.cache", "data.val_batch_size", "model.init_from",
    "distill.teacher",  # the teacher file's SHA-256 is compared instead
})  # fmt: skip


def _check_same_recipe(out: Path, config: TrainConfig) -> None:
    """Refuse to ``--resume`` ``out`` with a recipe that differs from its own (:func:`_recipe_changes`).

    A changed LR or model would otherwise be silently ignored (the state's schedule wins) or fail deep
    in ``load_state_dict``. Read from ``last.safetensors`` (or, before the first rename, ``next.*``); a
    folder with neither is left to :func:`_restore` to report.
    """
    for name in (run_folder.WEIGHTS, run_folder.NEXT_WEIGHTS):
        if (out / name).is_file():
            changes = _recipe_changes(read_metadata(out / name).get("config", {}), config.to_dict())
            if changes:
                raise ConfigError(_not_resumable(out, changes))
            return


def _not_resumable(out: Path, changes: list[str]) -> str:
    return (f"--resume continues {out} as it was started; these settings differ from its recipe: {'; '.join(changes)}. "
            "Resume with the run's own settings (epochs, paths, workers, the device and amp may change), or keep its "
            f"weights in a new run: another out: with model.init_from: {out / run_folder.WEIGHTS}")


def _recipe_changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key (old -> new)`` for every recipe setting that differs from the run's, beyond RESUMABLE_CHANGES.

    Sections (``model``, ``data``, ...) are compared key by key, options as a whole; a key the
    stored recipe lacks (added to semseg after the run started) counts as unchanged.
    """

    def flat(config: dict[str, Any]) -> dict[str, Any]:
        return {f"{section}.{key}" if isinstance(value, dict) and section in _SECTIONS else section: inner
                for section, value in config.items()
                for key, inner in (value.items() if isinstance(value, dict) and section in _SECTIONS else [(None, value)])}  # fmt: skip

    current = json.loads(json.dumps(current))  # as the checkpoint stored it: tuples as lists, int keys as strings
    for config in (stored, current):  # weight files only initialise: resuming loads the run's own weights
        options = config.get("model", {}).get("options", {})
        for key in WEIGHT_FILE_OPTIONS & options.keys():
            options[key] = None
    old, new = flat(stored), flat(current)
    return [f"{key} ({old[key]!r} -> {value!r})" for key, value in new.items()
            if key in old and key not in RESUMABLE_CHANGES and old[key] != value]  # fmt: skip


_SECTIONS = ("model", "data", "optim", "loss", "distill")


def _restore(out: Path, classes: list[str], model, optimizer, scheduler, scaler, dist: distributed.DistInfo,
             ema: AveragedModel | None = None, distill: dict[str, Any] | None = None) -> tuple[int, list, float]:  # fmt: skip
    """Load ``last.*`` from ``out`` (after finishing any interrupted commit); returns (epochs done, history, best mIoU).

    ``classes`` (the dataset's) must be the run's own; :func:`_check_same_recipe` has compared the rest.
    With ``ema``, ``last.safetensors`` holds the average and the state file the trained weights.
    ``distill`` (:attr:`Distiller.identity`: teacher file, weight, temperature) must be the run's own."""
    if dist.is_main:
        run_folder.recover(out)
    distributed.barrier()
    weights, state_path = out / run_folder.WEIGHTS, out / run_folder.STATE
    if not weights.is_file() or not state_path.is_file():
        raise FileNotFoundError(f"cannot resume: {weights} and {state_path} must both exist (train without --resume first)")
    state = load_training_state(state_path)
    meta = read_metadata(weights)
    if meta["epoch"] != state["epoch"]:
        raise ValueError(f"{weights} and {state_path} are from different epochs and no next.* files complete "
                         "either; restore both from a backup, or start again with --overwrite")  # fmt: skip
    if (ema is None) != ("ema" not in state):
        raise ConfigError(f"{out} was trained {'without' if ema is not None else 'with'} ema; resume it with the ema it "
                          "was started with, or start again with --overwrite")  # fmt: skip
    if state.get("distill") != distill:
        raise ConfigError(f"{out} was trained with {_teacher(state.get('distill'))} and this run has "
                          f"{_teacher(distill)}; resume it with the distill settings it was started with, or "
                          "start again with --overwrite")  # fmt: skip
    if meta["classes"] != classes:
        raise ConfigError(_not_resumable(out, [f"the dataset's classes ({meta['classes']} -> {classes})"]))
    if ema is None:
        model.load_state_dict(load_file(str(weights)))
    else:
        model.load_state_dict(state["ema"]["trained_weights"])
        ema.module.load_state_dict(load_file(str(weights)))
        ema.n_averaged.fill_(state["ema"]["steps"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", np.array(rng["numpy"], dtype=np.uint32), rng["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(rng["python"]), None))
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])  # dropout and augmentation on GPUs draw from these
    history = list(state["history"])
    if dist.is_main:
        run_folder.truncate_log(out, state["epoch"])
        run_folder.restore_best(out, history, state["best_mIoU"])
    return state["epoch"], history, state["best_mIoU"]


def _teacher(distill: dict[str, Any] | None) -> str:
    if distill is None:
        return "no distillation teacher"
    return (f"the distillation teacher whose file has sha256 {distill['teacher_sha256'][:12]} at weight "
            f"{distill['weight']}, temperature {distill['temperature']}")


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
    if "distill_loss" in record:  # distillation runs only
        scalars["train/distill_loss"] = record["distill_loss"]
    if record.get("epoch_s") is not None:
        scalars["train/epoch_s"] = record["epoch_s"]
    for key, value in record["val"].items():
        if isinstance(value, dict):
            scalars.update({f"val_{key.removeprefix('per_class_')}/{name}": v for name, v in value.items()})
        else:
            scalars[f"val/{key}"] = value
    return scalars


_TRAIN_SIZE_FIX = "set data.crop_size: [H, W] to train on crops of one size, or data.batch_size: 1"
_VAL_SIZE_FIX = "set data.val_batch_size: 1 (validation scores whole images)"


def collate_same_size(samples: list[tuple[torch.Tensor, ...]], fix: str) -> Any:
    """Stack ``(image, mask)`` samples into a batch, or say in one line that their sizes differ and ``fix``.

    PyTorch's own collate fails with "stack expects each tensor to be equal size" from inside a
    DataLoader worker; a folder of photos of mixed sizes without ``crop_size`` is the usual cause.
    """
    sizes = sorted({tuple(sample[0].shape[-2:]) for sample in samples})
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:4])
        raise DataError(f"the images of one batch differ in size ({shown}): {fix}")
    return default_collate(samples)


def _check_finite(model: nn.Module, epoch: int) -> None:
    """Refuse to validate or save weights that hold a NaN or infinity: no command could load them."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FloatingPointError(
                f"after epoch {epoch} the weights hold NaN or infinite values ({name}), so they were not saved; "
                "lower optim.lr or set clip_grad_norm and train again: from the start (--overwrite), or from the "
                "last saved epoch in a new run (another out: with model.init_from: OUT/last.safetensors)"
            )


def _wall_time(history: list[dict[str, Any]], epoch_s: float) -> dict[str, float | None]:
    """This epoch's wall seconds (training and validation) and the run's total over every committed epoch.

    The total adds up across ``--resume``, so a recipe's "fits in N hours" is read off the last
    record; it is ``None`` once any earlier record lacks it (logged by a version without it).
    Time lost to an epoch that a crash cut short is not in it.
    """
    earlier = [h.get("epoch_s") for h in history]
    total = None if None in earlier else sum(earlier) + epoch_s
    return {"epoch_s": epoch_s, "train_time_s": total}


def _log(out: Path, record: dict[str, Any], tensorboard: Any = None) -> None:
    """Append ``record`` to ``log.jsonl`` (and TensorBoard), and print one line: quiet runs leave a trace too."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if tensorboard is not None:
        for tag, value in _tensorboard_scalars(record).items():
            tensorboard.add_scalar(tag, value, global_step=record["epoch"])
        tensorboard.flush()  # a live TensorBoard sees each epoch as it ends; a killed run keeps it
    val = "-" if record["val_mIoU"] is None else f"{record['val_mIoU']:.4f}"
    print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}  val mIoU {val}  "
          f"lr {record['lr']:.2e}  {record['images_per_s']:.1f} img/s{_minutes(record)}", flush=True)


def _minutes(record: dict[str, Any]) -> str:
    """`` 2.1 min (total 63 min)``: the epoch's wall time and the run's so far, where logged."""
    if record.get("epoch_s") is None:
        return ""
    total = record.get("train_time_s")
    return f"  {record['epoch_s'] / 60:.1f} min" + ("" if total is None else f" (total {total / 60:.0f} min)")
