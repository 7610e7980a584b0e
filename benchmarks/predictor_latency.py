"""Where the time of one `Predictor` call goes, and the share of it spent around the model.

    python benchmarks/predictor_latency.py MODEL.onnx|MODEL.xml|CKPT.safetensors IMAGE [--backend auto] [--repeats 20]

Prints the median over ``--repeats`` calls (after one warm-up) of each stage: decoding the
PNG, normalising, the model, the argmax, the whole labels-only call (normalise + model +
argmax), the palette image of the mask and its PNG encoding; then the work around the model
(decode + normalise + argmax + palette image) as a share of the model's time, and the whole
call with probabilities. An image the model takes whole is never resized. Medians, because
a machine shared with other work makes single calls slow at random.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from semseg.inference.backends import BACKENDS
from semseg.inference.predictor import Predictor
from semseg.serving.codec import decode_image, png_bytes
from semseg.visualize import palette_image

import torch  # noqa: E402, I001 -- after semseg, which sets OMP_WAIT_POLICY before torch loads OpenMP


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("image")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint(args.model, backend=args.backend)
    data = open(args.image, "rb").read()
    rgb = decode_image(data, max_pixels=10**9)
    x = predictor._tensor(rgb)
    logits = predictor.model(x)
    mask = predictor(rgb)
    stages = {
        "decode PNG": lambda: decode_image(data, max_pixels=10**9),
        "normalise": lambda: predictor._tensor(rgb),
        "model": lambda: predictor.model(x),
        "argmax": lambda: logits[0].max(0).indices.byte().numpy(),
        "whole call, labels": lambda: predictor(rgb),
        "palette image": lambda: palette_image(mask, predictor.palette),
        "palette PNG encoding": lambda: png_bytes(palette_image(mask, predictor.palette)),
    }
    ms = {}
    print(f"{args.model} on {predictor.backend}, {rgb.shape[0]}x{rgb.shape[1]} image")
    with torch.inference_mode():  # as inside a Predictor call
        for name, fn in stages.items():
            ms[name] = median_ms(fn, args.repeats)
            print(f"{name}: {ms[name]:.1f} ms")
        probs = median_ms(lambda: predictor(rgb, return_probs=True), args.repeats)
    around = ms["decode PNG"] + ms["normalise"] + ms["argmax"] + ms["palette image"]
    print(f"around the model (decode + normalise + argmax + palette image): {around:.1f} ms = "
          f"{100 * around / ms['model']:.0f}% of the model's {ms['model']:.1f} ms")  # fmt: skip
    print(f"whole call, labels + probabilities: {probs:.1f} ms")


if __name__ == "__main__":
    main()
