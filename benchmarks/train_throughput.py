"""Training images/s: ``semseg train``'s own step against plain PyTorch loops, in one run.

    python benchmarks/train_throughput.py configs/ddrnet_23_slim_camvid.yaml --steps 12 --rounds 2

Three ways to train the recipe's model on the recipe's data, batch and augmentation, each
timed over ``--steps`` optimizer steps (after 2 warm-up steps), data loading included:

* ``semseg``: the trainer's loader and :func:`semseg.engine.train.train_one_epoch`, with the
  recipe's settings (channels_last, data.cache, workers, amp);
* ``plain NCHW``: the loop everyone writes — the same dataset through a DataLoader,
  ``loss.backward(); optimizer.step()`` — in PyTorch's default memory format;
* ``plain channels_last``: the same loop with model and batches in channels_last.

A distillation recipe's teacher runs in ``--only semseg`` (the recipe's real step); the
ratios are taken without it (``distill.teacher=null``), as the plain loops have none.

Each measurement runs in a fresh process, as ``semseg train`` does, so that process-wide
settings count where they belong: the semseg process tunes glibc's allocator as the
``train`` command does (:mod:`semseg.allocator`); the plain loops get Python's defaults.
Rounds alternate the three so that drift on a shared machine hits them alike; the best
round of each is reported, with the ratios semseg / plain.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time

import torch
from torch.utils.data import DataLoader

from semseg.allocator import keep_freed_memory
from semseg.config import load_config
from semseg.engine.datasets import build_datasets
from semseg.engine.distill import training_distiller
from semseg.engine.train import TrainForward, train_one_epoch, training_loss
from semseg.engine.trainer import build_loss, build_optimizer
from semseg.registry import create_model

WARMUP = 2
WAYS = ("semseg", "plain NCHW", "plain channels_last")


def _loader(dataset, config, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=config.data.batch_size, shuffle=True, drop_last=True,
                      num_workers=config.data.workers, generator=generator)  # fmt: skip


def _model(config, num_classes: int):
    torch.manual_seed(config.seed)
    return create_model(config.model.name, num_classes=num_classes, **config.model.options)


def semseg_step(config, data, steps: int) -> float:
    """images/s of the trainer's own loop, settings as the recipe says."""
    model = _model(config, len(data.classes))
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, loss_fn = build_optimizer(config, model), build_loss(config, len(data.classes))
    distill = training_distiller(config, data)  # a recipe's teacher runs in the step as in training
    batches = itertools.islice(_loader(data.train, config, 0), WARMUP + steps)
    warm = [next(batches) for _ in range(WARMUP)]
    common = {"channels_last": config.channels_last, "amp": config.amp, "progress": False, "distill": distill}
    train_one_epoch(model, warm, optimizer, loss_fn, **common)
    start = time.perf_counter()
    train_one_epoch(model, batches, optimizer, loss_fn, **common)
    return steps * config.data.batch_size / (time.perf_counter() - start)


def plain_loop(config, data, steps: int, *, channels_last: bool) -> float:
    """images/s of a textbook loop on the same model, data and optimizer."""
    model = _model(config, len(data.classes))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = TrainForward(model).train()
    optimizer, loss_fn = build_optimizer(config, model), build_loss(config, len(data.classes))
    start = None
    for i, (images, masks) in enumerate(itertools.islice(_loader(data.train, config, 0), WARMUP + steps)):
        if i == WARMUP:
            start = time.perf_counter()
        loss = training_loss(net(images.contiguous(memory_format=fmt)), masks, loss_fn, model.aux_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * config.data.batch_size / (time.perf_counter() - start)


def measure(config_path: str, overrides: list[str], name: str, steps: int) -> float:
    """images/s of one way of training, in this process."""
    if name == "semseg":
        keep_freed_memory()
        config = load_config(config_path, overrides)
        return semseg_step(config, build_datasets(config), steps)
    config = load_config(config_path, [*overrides, "data.cache=false"])  # a plain loop decodes every epoch
    return plain_loop(config, build_datasets(config), steps, channels_last=name == "plain channels_last")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. data.cache=true (no leading --)")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=WAYS, help="one measurement in this process, printing its images/s")
    args = parser.parse_args()
    if args.only is None and load_config(args.config, args.overrides).distill.teacher is not None:
        parser.error("the plain loops have no teacher, so the ratios need distill.teacher=null; "
                     "--only semseg times the recipe's own step, teacher included")  # fmt: skip
    if args.only:
        print(measure(args.config, args.overrides, args.only, args.steps))
        return
    best = {name: 0.0 for name in WAYS}
    for r in range(args.rounds):
        for name in WAYS:
            child = [sys.executable, __file__, args.config, *args.overrides, "--steps", str(args.steps), "--only", name]
            rate = float(subprocess.run(child, check=True, capture_output=True, text=True).stdout.split()[-1])
            best[name] = max(best[name], rate)
            print(f"round {r + 1} {name:<20} {rate:6.2f} images/s", flush=True)
    config = load_config(args.config, args.overrides)
    h, w = config.data.crop_size or ("full", "size")
    print(f"\n{config.model.name} {h}x{w} batch {config.data.batch_size}, {config.data.workers} workers, "
          f"{torch.get_num_threads()} threads, cache={config.data.cache}, channels_last={config.channels_last}, "
          f"amp={config.amp} (semseg only; the plain loops are fp32)")
    for name, rate in best.items():
        print(f"{name:<20} {rate:6.2f} images/s")
    print(f"semseg / plain NCHW          {best['semseg'] / best['plain NCHW']:.2f}x")
    print(f"semseg / plain channels_last {best['semseg'] / best['plain channels_last']:.2f}x")


if __name__ == "__main__":
    main()
