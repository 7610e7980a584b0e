"""End-to-end video FPS of `semseg predict CLIP`: the pipelined reader / model / writer against the
same three stages run one after another.

    python benchmarks/video_fps.py CKPT_OR_EXPORT CLIP.mp4 [--backend auto] [--rounds 2]

Each round segments the whole clip both ways (decode, segment, overlay, encode; output in a
temporary folder) and prints frames per second; rounds alternate the two so that a change in
the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from semseg.inference import predict
from semseg.inference.backends import BACKENDS
from semseg.inference.predictor import Predictor


def sequential(source, process, sink, *, depth: int = 4) -> int:
    """What `semseg predict` did before the pipeline: read, process and write each item in turn."""
    count = 0
    for item in source:
        sink(process(item))
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("clip")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint(args.model, backend=args.backend)
    pipelined = predict.run_pipeline
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for name, runner in (("one after another", sequential), ("pipelined", pipelined)):
                predict.run_pipeline = runner  # segment_video looks it up at call time
                frames, seconds, _ = predict.segment_video(predictor, Path(args.clip), Path(tmp) / "out.mp4",
                                                           progress=False)  # fmt: skip
                print(f"round {round_}, {predictor.backend}, {name}: {frames} frames, {frames / seconds:.1f} FPS",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
