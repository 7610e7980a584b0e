"""Write a large PNG that compresses well (flat discs on a flat background), for memory measurements.

    python benchmarks/large_image.py 4000 4000 big.png   # 4000x4000, about 70 KB

A small file with many pixels is what makes whole-image inference expensive: the upload
limit does not stop it, only the pixel limit and tiling bound what it costs.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("width", type=int)
    parser.add_argument("height", type=int)
    parser.add_argument("out")
    args = parser.parse_args()
    image = Image.new("RGB", (args.width, args.height), (90, 120, 160))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(0)
    for _ in range(8):
        x, y = rng.integers(0, args.width), rng.integers(0, args.height)
        r = int(rng.integers(50, max(51, min(args.width, args.height) // 6)))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image.save(args.out, optimize=True)
    print(f"wrote {args.out}: {args.width}x{args.height}, {os.path.getsize(args.out):,} bytes")


if __name__ == "__main__":
    main()
