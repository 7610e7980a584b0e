"""Why `semseg predict` ran 5-10x slower than `semseg serve` on a busy machine, and what fixed it.

    python benchmarks/thread_policy.py CKPT.safetensors IMAGE [--backend torch] [--repeats 5]

Each case runs in a fresh process (OpenMP reads its settings once, at start-up) and prints
the median time of one Predictor call, after a warm-up call:

- OpenMP's default wait policy (torch imported before semseg, as before the fix) or semseg's
  ``OMP_WAIT_POLICY=PASSIVE`` (set when semseg is imported first, as the CLI does);
- the call made in the main thread (as `semseg predict` does) or in a worker thread (as
  `semseg serve` does, off its event loop).

The difference only shows while another process keeps the cores busy (e.g. a training run).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import sys, threading, time
{first}
from semseg.inference.predictor import Predictor, to_rgb_array
predictor = Predictor.from_checkpoint(sys.argv[1], backend=sys.argv[2])
rgb, repeats, times = to_rgb_array(sys.argv[3]), int(sys.argv[4]), []

def run():
    predictor(rgb)
    for _ in range(repeats):
        start = time.perf_counter()
        predictor(rgb)
        times.append(time.perf_counter() - start)

if sys.argv[5] == "worker":
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
else:
    run()
print(f"{{sorted(times)[len(times) // 2] * 1000:.0f}}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("image")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for policy, first in (("OpenMP default", "import torch"), ("semseg default (PASSIVE)", "import semseg")):
        for where in ("main", "worker"):
            code = CHILD.format(first=first)
            out = subprocess.run([sys.executable, "-c", code, args.checkpoint, args.backend, args.image,
                                  str(args.repeats), where], capture_output=True, text=True, check=True)  # fmt: skip
            print(f"{policy:<26} {where:>6} thread: {out.stdout.strip()} ms per call", flush=True)


if __name__ == "__main__":
    main()
