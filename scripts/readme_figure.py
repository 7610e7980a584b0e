"""The README's result figure: CamVid val images, their ground truth and a shipped model's prediction.

    python scripts/readme_figure.py camvid-ddrnet_23_slim --root ../shared/data/camvid \\
        --index 10 60 --out docs/images/camvid_result.png

Each row is image | ground truth | prediction (white: unlabelled in the ground truth),
made with the same Predictor ``semseg predict`` uses; the per-image mIoU of each row is
printed so the caption can state it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semseg.engine.datasets import open_dataset
from semseg.engine.evaluate import score_predictions
from semseg.inference.predictor import Predictor
from semseg.visualize import side_by_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a shipped model's name or a checkpoint file")
    parser.add_argument("--data", default="camvid")
    parser.add_argument("--root", default=None)
    parser.add_argument("--index", type=int, nargs="+", default=[10, 60], help="val images to show, one row each")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    predictor = Predictor.from_pretrained(args.model, backend="torch")
    data = open_dataset(args.data, "val", root=args.root)
    rows = []
    for i in args.index:
        image, truth = data.raw(i)
        pred = predictor(image)
        _, (score,) = score_predictions([(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth))],
                                        num_classes=len(data.classes), ignore_index=data.ignore_index)  # fmt: skip
        print(f"val image {i}: mIoU {score:.3f}")
        rows.append(np.asarray(side_by_side(image, truth, pred, predictor.palette)))
    gap = np.full((4, rows[0].shape[1], 3), 255, dtype=np.uint8)
    figure = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).save(args.out, optimize=True)
    print(f"wrote {args.out} ({figure.shape[1]}x{figure.shape[0]})")


if __name__ == "__main__":
    main()
