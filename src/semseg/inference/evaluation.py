"""``semseg evaluate``: score a checkpoint on a dataset split through the :class:`Predictor`.

Evaluation uses exactly the pre/post-processing of prediction (one implementation), so
sliding windows and flip / multi-scale test-time augmentation apply to both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from semseg.engine.datasets import open_dataset
from semseg.engine.evaluate import score_predictions
from semseg.inference.predictor import Predictor
from semseg.metrics import metrics_from_confusion
from semseg.progress import progress_bar
from semseg.visualize import side_by_side

WORST = 6  # images in the gallery of worst-scoring ones


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str,
    *,
    root: str | None = None,
    split: str = "val",
    device: str = "cpu",
    backend: str = "auto",
    tile: int | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    out: str | Path | None = None,
    progress: bool = True,
    input_scale: float | None = None,
) -> dict:
    """mIoU and the rest over every image of the split (streamed confusion matrix).

    ``input_scale``: run the model on inputs resized by this factor (None: the checkpoint's own).

    With ``out``: writes ``metrics.json``, ``per_class.md``, ``confusion.png`` and
    ``worst/`` (image | truth | prediction of the lowest-mIoU images).
    """
    predictor = Predictor.from_checkpoint(checkpoint, device=device, backend=backend, tile=tile, flip=flip,
                                          scales=scales, input_scale=input_scale)  # fmt: skip
    # A folder has no class list of its own: it has the checkpoint's classes (whose indices its masks hold) and bands.
    folder = {"classes": predictor.classes, "bands": predictor.bands}
    data = open_dataset(dataset, split, root=root, options=folder if dataset == "folder" else None)
    if list(data.classes) != predictor.classes:
        raise ValueError(f"{checkpoint} predicts {len(predictor.classes)} classes {predictor.classes[:5]}... but "
                         f"{dataset} has {len(data.classes)} {list(data.classes)[:5]}...; "
                         "evaluate on the dataset it was trained for")  # fmt: skip
    if getattr(data, "bands", None) != predictor.bands:
        def what(bands: int | None) -> str:
            return "8-bit RGB" if bands is None else f"{bands} band(s) at full precision"

        raise ValueError(f"{checkpoint} reads {what(predictor.bands)} but {dataset} gives {what(data.bands)}; "
                         "evaluate on data described as the model was trained (the description's bands:)")  # fmt: skip
    if data.bands is not None:  # no-data pixels are filled with the model's mean, as in training
        data.set_statistics(predictor.mean.flatten().tolist(), predictor.std.flatten().tolist())
    pairs = ((torch.from_numpy(predictor(image).astype(np.int64)), torch.from_numpy(mask))
             for image, mask in (data.raw(i) for i in progress_bar(range(len(data)), desc="evaluate", enabled=progress)))
    mat, per_image = score_predictions(pairs, num_classes=len(data.classes), ignore_index=data.ignore_index)
    metrics = metrics_from_confusion(mat, data.classes)
    scores = [(score, i) for i, score in enumerate(per_image)]
    if out is not None:
        _write_report(Path(out), metrics, mat, data, predictor, scores,
                      {"checkpoint": str(checkpoint), "dataset": dataset, "split": split, "images": len(data),
                       "backend": predictor.backend, "tile": tile, "flip": flip, "scales": list(scales),
                       "input_scale": predictor.input_scale})  # fmt: skip
    return metrics


def _write_report(out: Path, metrics: dict, mat: torch.Tensor, data, predictor: Predictor, scores: list, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({**metrics, **info}, indent=2) + "\n")
    (out / "per_class.md").write_text(per_class_table(metrics) + "\n")
    plot_confusion(mat, data.classes, out / "confusion.png")
    (out / "worst").mkdir(exist_ok=True)
    for rank, (score, i) in enumerate(sorted(scores)[:WORST], start=1):
        image, mask = data.raw(i)
        panel = side_by_side(image, mask, predictor(image), predictor.palette)
        panel.save(out / "worst" / f"{rank}_{Path(data.pairs[i][0]).stem}_mIoU{score:.3f}.png")


def per_class_table(metrics: dict) -> str:
    """Markdown table of per-class IoU, accuracy and Dice, with the means underneath."""
    lines = ["| class | IoU | accuracy | Dice |", "|---|---:|---:|---:|"]
    for name, iou in metrics["per_class_IoU"].items():
        acc, dice = metrics["per_class_accuracy"][name], metrics["per_class_dice"][name]
        lines.append(f"| {name} | {iou:.4f} | {acc:.4f} | {dice:.4f} |")
    lines.append(f"| **mean** | **{metrics['mIoU']:.4f}** | {metrics['mean_accuracy']:.4f} | {metrics['mean_dice']:.4f} |")
    lines.append(f"\npixel accuracy {metrics['pixel_accuracy']:.4f}, frequency-weighted IoU {metrics['fw_IoU']:.4f}")
    return "\n".join(lines)


def plot_confusion(mat: torch.Tensor, classes: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: truth) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = (mat.double() / mat.sum(1, keepdim=True).clamp_min(1)).numpy()
    size = 2 + 0.45 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
