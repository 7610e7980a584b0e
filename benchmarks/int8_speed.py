"""int8 against fp32, in ONNX Runtime and in OpenVINO: latency of `semseg export` files.

    python benchmarks/int8_speed.py --calibration "../shared/data/camvid/train/*.png"

For each model (random weights, 11 classes): exports fp32 ONNX and OpenVINO IR, an int8
ONNX (ONNX Runtime's static quantizer) and an int8 IR (NNCF), each int8 file calibrated on
the first 8 images, then times one 360x480 image, batch 1, in each engine (median of
``--repeats`` after a warm-up). Prints a markdown row per model. Accuracy needs trained
weights: measure it with `semseg evaluate FILE`.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time
from pathlib import Path

import torch

import semseg
from semseg.engine.checkpoint import save_weights
from semseg.inference.backends import Backend, OnnxRuntimeModel, OpenVinoModel
from semseg.inference.export import export
from semseg.inference.quantize import export_int8, export_int8_openvino


def median_ms(model: Backend, x: torch.Tensor, repeats: int) -> float:
    model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", required=True, help="glob of calibration images")
    parser.add_argument("--models", nargs="*", default=["deeplabv3", "fcn", "pspnet", "deeplabv3plus", "unet", "lraspp"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    calibration = sorted(glob.glob(args.calibration))[:8]
    x = torch.randn(1, 3, 360, 480, generator=torch.Generator().manual_seed(0))
    print("| model | ORT fp32 (ms) | ORT int8 (ms) | ORT int8 speed-up | OpenVINO fp32 (ms) | OpenVINO int8 (ms) "
          "| OpenVINO int8 speed-up |\n|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = semseg.create_model(name, num_classes=11).eval()
            checkpoint = save_weights(model, Path(tmp) / f"{name}.safetensors", classes=[str(i) for i in range(11)],
                                      palette=[[i, i, i] for i in range(11)], mean=[0.485, 0.456, 0.406],
                                      std=[0.229, 0.224, 0.225])  # fmt: skip
            files = {k: Path(tmp) / f"{name}{k}" for k in (".onnx", ".int8.onnx", ".xml", ".int8.xml")}
            export(checkpoint, files[".onnx"], check_sizes=((64, 64),))
            export(checkpoint, files[".xml"], fmt="openvino", check_sizes=((64, 64),))
            export_int8(checkpoint, files[".int8.onnx"], calibration, min_agreement=0)
            export_int8_openvino(checkpoint, files[".int8.xml"], calibration, min_agreement=0)
            ort32, ort8 = (median_ms(OnnxRuntimeModel(files[k]), x, args.repeats) for k in (".onnx", ".int8.onnx"))
            ov32, ov8 = (median_ms(OpenVinoModel(files[k]), x, args.repeats) for k in (".xml", ".int8.xml"))
            print(f"| {name} | {ort32:.0f} | {ort8:.0f} | {ort32 / ort8:.2f}x | {ov32:.0f} | {ov8:.0f} "
                  f"| {ov32 / ov8:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
