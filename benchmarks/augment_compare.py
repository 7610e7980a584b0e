"""Our joint training augmentation against albumentations' equivalent, on real CamVid pairs.

    pip install albumentations  # not a semseg dependency; only for this comparison
    python benchmarks/augment_compare.py --root ../shared/data/camvid --pairs 40

Times the transform alone (images already decoded), in one process, and checks that
neither pipeline puts a value into a mask that was not there (besides the ignore index
used for padding).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from semseg.data import CamVid, train_transforms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args()
    dataset = CamVid(args.root, "train")
    pairs = [dataset.raw(i) for i in range(args.pairs)]
    mean, std = dataset.mean, dataset.std
    ours = train_transforms((360, 480), scale=(0.5, 2.0), mean=mean, std=std, ignore_index=255, color_jitter=True, seed=0)
    pipelines = {"semseg": lambda image, mask: ours(image, mask)[1]}
    try:
        import albumentations as A
        import cv2
    except ImportError:
        print("albumentations is not installed: timing semseg only")
    else:
        fill = tuple(round(m * 255) for m in mean)
        alb = A.Compose([
            A.RandomScale(scale_limit=(-0.5, 1.0), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST, p=1),
            A.PadIfNeeded(360, 480, border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=255),
            A.RandomCrop(360, 480),
            A.HorizontalFlip(),
            A.ColorJitter(0.4, 0.4, 0.4, 0.0, p=1),
            A.Normalize(mean=mean, std=std),
        ], seed=0)  # fmt: skip
        pipelines[f"albumentations {A.__version__}"] = lambda image, mask: alb(image=image, mask=mask)["mask"]
    for name, run in pipelines.items():
        run(*pairs[0])
        start = time.perf_counter()
        preserved = all(set(np.unique(np.asarray(run(i, m)))) <= set(np.unique(m)) | {255} for i, m in pairs)
        rate = len(pairs) / (time.perf_counter() - start)
        print(f"{name:<24} {rate:7.1f} pairs/s   mask values preserved: {preserved}")


if __name__ == "__main__":
    main()
