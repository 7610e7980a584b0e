"""int8 against fp32 in ONNX Runtime: latency of `semseg export` and `semseg export --int8` files.

    python benchmarks/int8_speed.py --calibration "../shared/data/camvid/train/*.png"

For each model (random weights, 11 classes): exports fp32 and int8 (calibrated on the
first 8 images) to a temporary folder, then times one 360x480 image, batch 1 (median of
3 after a warm-up). Prints a markdown row per model. Accuracy needs trained weights:
measure it with `semseg evaluate FILE.onnx --backend onnxruntime`.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import semseg
from semseg.engine.checkpoint import save_weights
from semseg.inference.export import export
from semseg.inference.quantize import export_int8


def median_ms(session: ort.InferenceSession, x: np.ndarray, repeats: int = 3) -> float:
    session.run(None, {"image": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", required=True, help="glob of calibration images")
    parser.add_argument("--models", nargs="*", default=["deeplabv3", "fcn", "pspnet", "deeplabv3plus", "unet", "lraspp"])
    args = parser.parse_args()
    calibration = sorted(glob.glob(args.calibration))[:8]
    x = np.random.default_rng(0).standard_normal((1, 3, 360, 480)).astype(np.float32)
    print("| model | ORT fp32 (ms) | ORT int8 (ms) | int8 vs fp32 |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = semseg.create_model(name, num_classes=11).eval()
            checkpoint = save_weights(model, Path(tmp) / f"{name}.safetensors", classes=[str(i) for i in range(11)],
                                      palette=[[i, i, i] for i in range(11)], mean=[0.485, 0.456, 0.406],
                                      std=[0.229, 0.224, 0.225])  # fmt: skip
            fp32, int8 = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.int8.onnx"
            export(checkpoint, fp32, check_sizes=((64, 64),))
            export_int8(checkpoint, int8, calibration, min_agreement=0)
            a, b = (median_ms(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]), x) for p in (fp32, int8))
            print(f"| {name} | {a:.0f} | {b:.0f} | {a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
