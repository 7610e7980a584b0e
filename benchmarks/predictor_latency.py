"""Where the time of one `Predictor` call goes: decoding, normalising, the model, the argmax.

    python benchmarks/predictor_latency.py MODEL.onnx|CKPT.safetensors IMAGE

Prints the mean over 20 calls (after one warm-up) of each stage and of the whole call,
labels only and with probabilities.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from semseg.inference.predictor import Predictor
from semseg.serving.codec import decode_image


def mean_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("image")
    args = parser.parse_args()
    backend = "onnxruntime" if args.model.endswith(".onnx") else "torch"
    predictor = Predictor.from_checkpoint(args.model, backend=backend)
    data = open(args.image, "rb").read()
    rgb = decode_image(data, max_pixels=10**9)
    x = predictor._tensor(rgb)
    stages = {
        "decode PNG": lambda: decode_image(data, max_pixels=10**9),
        "normalise": lambda: predictor._tensor(rgb),
        "model": lambda: predictor.model(x),
        "whole call, labels": lambda: predictor(rgb),
        "whole call, labels + probabilities": lambda: predictor(rgb, return_probs=True),
    }
    for name, fn in stages.items():
        print(f"{name}: {mean_ms(fn):.1f} ms")


if __name__ == "__main__":
    main()
