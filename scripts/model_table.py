"""Print a markdown table of every registered model x backbone: parameters and GFLOPs.

    python scripts/model_table.py [--num-classes 21] [--size 512x512]

Models are built on the meta device (:func:`semseg.profile.model_cost`), so even the
134M-parameter FCN-8s costs nothing to measure. Options other than ``backbone`` keep
their defaults (e.g. PSPNet's aux head is on, DeepLab's and FCN's are off); a model's
valid backbones are read from its builder's ``backbone: Literal[...]`` annotation.
"""

from __future__ import annotations

import argparse

from semseg.profile import model_cost
from semseg.registry import list_models, model_backbones, model_options


def backbones(name: str) -> tuple[str | None, ...]:
    """The model's valid backbones, default first; ``(None,)`` if it has no such option."""
    return model_backbones(name) or (None,)


def table(num_classes: int, size: tuple[int, int]) -> str:
    h, w = size
    lines = [
        f"| model | backbone | params (M) | GFLOPs @{h}x{w} | default options |",
        "|---|---|---:|---:|---|",
    ]
    for name in list_models():
        skip = ("num_classes", "backbone", "backbone_weights", "in_channels")
        defaults = {k: v for k, v in model_options(name).items() if k not in skip}
        shown = ", ".join(f"{k}={v}" for k, v in defaults.items())
        for backbone in backbones(name):
            options = {} if backbone is None else {"backbone": backbone}
            cost = model_cost(name, num_classes=num_classes, size=size, **options)
            lines.append(
                f"| {name} | {backbone or '-'} | {cost['params'] / 1e6:.2f} | {cost['gflops']:.1f} | {shown} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--size", default="512x512", help="HxW of the input the FLOPs are counted for")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    print(table(args.num_classes, (h, w)))


if __name__ == "__main__":
    main()
