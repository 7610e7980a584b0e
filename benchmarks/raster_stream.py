"""Peak memory and wall time of streaming a large GeoTIFF through an untrained LR-ASPP.

    python benchmarks/raster_stream.py                 # 20,000 x 20,000, tile 1024 (issue 14: peak RSS <= 1.5 GB)
    python benchmarks/raster_stream.py --size 4000     # a quicker check
    python benchmarks/raster_stream.py --height 1586   # 20,000 wide: 20,000 x 20,000's memory, 1/14 of its windows

Writes a synthetic 3-band uint8 GeoTIFF (tiled, deflate, a block row at a time so the writer stays
bounded too) in a child process, so that its memory is not counted; then segments it with
:func:`semseg.inference.raster.predict_raster` (12 classes, as in docs/benchmarks.md's large-image
rows; random weights cost what trained ones do) and prints the wall time and peak RSS (``ru_maxrss``)
of each: the prediction's figure is the whole process's, imports included.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import semseg
from semseg.data.base import IMAGENET_MEAN, IMAGENET_STD, default_palette
from semseg.inference.predictor import Predictor
from semseg.inference.raster import import_rasterio, predict_raster

ROWS = 512  # rows written at a time: whole rows of the input's 512 x 512 blocks


def peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def write_synthetic(path: Path, width: int, height: int) -> None:
    """Fields and roads: flat patches that compress as aerial imagery does, some noise on top."""
    rasterio = import_rasterio()
    from rasterio.transform import Affine

    profile = {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8", "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "crs": "EPSG:32633",
               "transform": Affine(0.5, 0, 500_000, 0, -0.5, 4_600_000), "BIGTIFF": "IF_SAFER"}  # fmt: skip
    rng = np.random.default_rng(0)
    x = np.arange(width, dtype=np.int32)
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, height, ROWS):
            y = np.arange(top, min(top + ROWS, height), dtype=np.int32)[:, None]
            field = ((x // 173)[None] * 7 + (y // 151) * 13) % 23
            road = ((x % 600) < 12)[None] | ((y % 700) < 10)
            bands = [(field * 9 + 40) % 248, (field * 5 + 70) % 248, (field * 3 + 30) % 248]  # + noise < 256
            rgb = np.stack([np.where(road, 200, b) for b in bands]).astype(np.uint8)
            rgb += rng.integers(0, 8, rgb.shape, dtype=np.uint8)
            dst.write(rgb, window=rasterio.windows.Window(0, top, width, rgb.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="raster width and height (default: 20000)")
    parser.add_argument("--height", type=int, help="raster height (default: --size). What memory holds grows with the "
                        "width only: a raster 1024 + 562 = 1586 rows high (two bands of windows, 562 apart) carries "
                        "as many rows from band to band as 20,000 x 20,000, whose last two bands are 562 apart too")
    parser.add_argument("--tile", type=int, default=1024, help="sliding-window size (default: 1024)")
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--dir", type=Path, help="where to write the rasters (default: a temporary folder)")
    args = parser.parse_args()
    width, height = args.size, args.height or args.size
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        source, target = Path(tmp) / "synthetic.tif", Path(tmp) / "labels.tif"
        start = time.perf_counter()
        writer = multiprocessing.get_context("fork").Process(target=write_synthetic, args=(source, width, height))
        writer.start()
        writer.join()
        if writer.exitcode:
            raise SystemExit(f"writing {source} failed (exit code {writer.exitcode})")
        print(f"wrote a {width} x {height} x 3 GeoTIFF, {source.stat().st_size / 2**20:,.0f} MiB, in "
              f"{time.perf_counter() - start:.0f} s; the writer's peak RSS "
              f"{peak_mib(resource.RUSAGE_CHILDREN):,.0f} MiB")  # fmt: skip
        torch.manual_seed(0)
        model = semseg.create_model("lraspp", num_classes=args.classes).eval()
        predictor = Predictor(model, classes=[f"c{i}" for i in range(args.classes)],
                              palette=default_palette(args.classes), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                              tile=args.tile)  # fmt: skip
        start = time.perf_counter()
        predict_raster(predictor, source, target)
        seconds = time.perf_counter() - start
        print(f"predicted with lraspp ({args.classes} classes, tile {args.tile}, {torch.get_num_threads()} threads) "
              f"in {seconds:.0f} s ({width * height / seconds / 1e6:.2f} Mpixel/s); labels "
              f"{target.stat().st_size:,} bytes; peak RSS {peak_mib():,.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
