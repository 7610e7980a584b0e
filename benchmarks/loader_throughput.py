"""DataLoader throughput on CamVid train, with the full training augmentation and without.

    python benchmarks/loader_throughput.py --root ../shared/data/camvid --batches 40

Prints images/s for each pipeline. The first batch (worker start-up, first file reads)
is timed separately and left out of the rate, so the figure is the steady state a
training loop sees. On a shared machine the numbers are a lower bound.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from semseg.data import CamVid, eval_transforms, seed_worker, train_transforms

CROP = (360, 480)


def measure(dataset: CamVid, *, batches: int, batch_size: int, workers: int) -> tuple[float, float]:
    """Seconds for the first batch, and images/s over the next ``batches`` batches."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(0),
    )
    needed = batches + 1
    if len(loader) < needed:
        raise SystemExit(f"{len(dataset)} images give {len(loader)} batches; ask for at most {len(loader) - 1}")
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        images, masks = next(it)
    elapsed = time.perf_counter() - start
    assert images.shape[1:] == (3, *CROP) and masks.shape[1:] == CROP
    return first, batches * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="CamVid root (train/, trainannot/, train.txt)")
    parser.add_argument("--batches", type=int, default=40, help="batches timed, after one warm-up batch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    mean, std = CamVid.mean, CamVid.std
    pipelines = {
        "train (scale 0.5-2, crop 360x480, flip, jitter)": train_transforms(
            CROP, scale=(0.5, 2.0), mean=mean, std=std, color_jitter=True, seed=0
        ),
        "eval (normalise only)": eval_transforms(mean, std),
    }
    print(f"CamVid train, batch {args.batch_size}, {args.workers} workers, {args.batches} batches timed")
    for name, transform in pipelines.items():
        first, rate = measure(
            CamVid(args.root, "train", transform=transform),
            batches=args.batches,
            batch_size=args.batch_size,
            workers=args.workers,
        )
        print(f"{name:<50} {rate:8.1f} images/s   (first batch {first:.2f} s)")


if __name__ == "__main__":
    main()
