"""Evaluation: stream predictions into a confusion matrix, then compute the metrics."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from semseg.data import eval_transforms
from semseg.engine.checkpoint import load_model
from semseg.engine.datasets import open_dataset
from semseg.metrics import ConfusionMatrix, metrics_from_confusion


@torch.inference_mode()
def confusion_matrix(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """The ``(C, C)`` matrix ``[true, predicted]`` of pixel counts over ``batches`` (whole images)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for images, masks in tqdm(batches, desc="eval", leave=False, disable=not progress, dynamic_ncols=True):
        cm.update(model(images.to(device)).argmax(1), masks)
    return cm.mat


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = 255,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """mIoU, per-class IoU, pixel accuracy and the rest (see :mod:`semseg.metrics`) over ``batches``."""
    mat = confusion_matrix(model, batches, num_classes=num_classes, ignore_index=ignore_index, device=device,
                           progress=progress)  # fmt: skip
    return metrics_from_confusion(mat, class_names)


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset: str,
    *,
    root: str | None = None,
    split: str = "val",
    batch_size: int = 1,
    device: str = "cpu",
    out: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Score a saved model on a dataset split with the checkpoint's own normalisation.

    With ``out``: writes ``metrics.json``, ``per_class.md`` and ``confusion.png`` there.
    """
    model, meta = load_model(checkpoint)
    model.to(device)
    data = open_dataset(dataset, split, root=root)
    if list(data.classes) != list(meta["classes"]):
        raise ValueError(f"{checkpoint} predicts {len(meta['classes'])} classes {meta['classes'][:5]}... but "
                         f"{dataset} has {len(data.classes)} {list(data.classes)[:5]}...; evaluate on the dataset it was trained for")  # fmt: skip
    data.transform = eval_transforms(meta["mean"], meta["std"])
    loader = DataLoader(data, batch_size=batch_size)
    mat = confusion_matrix(model, loader, num_classes=len(data.classes), ignore_index=data.ignore_index,
                           device=device, progress=progress)  # fmt: skip
    metrics = metrics_from_confusion(mat, data.classes)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": str(checkpoint), "dataset": dataset,
                                                      "split": split, "images": len(data)}, indent=2) + "\n")  # fmt: skip
        (out / "per_class.md").write_text(per_class_table(metrics) + "\n")
        plot_confusion(mat, data.classes, out / "confusion.png")
    return metrics


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
