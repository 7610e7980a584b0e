"""Inference speed of every registered model: sizes x batch sizes x engines, as markdown tables.

    python benchmarks/inference_table.py --out benchmarks/results/inference.jsonl
    python benchmarks/inference_table.py --out runs/engines.jsonl --sizes 360x480 --batches 1   # one size

Engines: torch eager (NCHW), torch channels_last, torch.compile, ONNX Runtime, OpenVINO and
OpenVINO int8 (NNCF, calibrated on random inputs: its speed, not its accuracy).
Each measurement is `semseg benchmark`'s (semseg.inference.benchmark): latency median and
p90 after warm-up, images/s, achieved GFLOP/s and its share of a peak measured in the same
run. Results are appended to ``--out`` as they come, and combinations already there are
skipped, so an interrupted run continues where it stopped. Run it on an idle machine:
anything else running shows up directly in the figures. Prints two tables at the end: every
row, and per size and batch the median ms of each engine side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from semseg.inference.backends import BENCHMARK_ENGINES
from semseg.inference.benchmark import benchmark
from semseg.profile import model_cost
from semseg.registry import list_models

ENGINES = tuple(e for e in BENCHMARK_ENGINES if e != "auto")
NEEDS = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",), "openvino-int8": ("openvino", "nncf")}


def key(row: dict) -> tuple:
    return row["model"], row["size"], row["batch"], row["backend"]


def table(rows: list[dict]) -> str:
    """Markdown: one line per model, size, batch and backend."""
    lines = ["| model | size | batch | backend | GFLOPs/img | latency median / p90 (ms) | images/s | GFLOP/s (share of peak) |",
             "|---|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | {r['backend']} | {r['gflops']:.1f} | "
                     f"{r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f} | {r['images_per_s']:.2f} | "
                     f"{r['achieved_gflops_per_s']:.0f} ({100 * r['share_of_peak']:.0f}% of {r['peak_gflops_per_s']:.0f}) |")  # fmt: skip
    return "\n".join(lines)


def side_by_side(rows: list[dict], models: list[str], engines: tuple[str, ...]) -> str:
    """Markdown: per size and batch, one line per model with each engine's median ms and the fastest."""
    lines = []
    for size, batch in sorted({(r["size"], r["batch"]) for r in rows}, key=lambda k: (_size(k[0]), k[1])):
        lines += [f"\n{size}, batch {batch}: median ms per batch\n",
                  f"| model | GFLOPs/img | {' | '.join(engines)} | fastest |", "|---|---:|" + "---:|" * (len(engines) + 1)]  # fmt: skip
        for model in models:
            got = {r["backend"]: r for r in rows if (r["model"], r["size"], r["batch"]) == (model, size, batch)}
            if not got:
                continue
            cells = [f"{got[e]['latency_ms_median']:.0f}" if e in got else "-" for e in engines]
            fastest = min(got.values(), key=lambda r: r["latency_ms_median"])
            speedup = f" ({got['torch']['latency_ms_median'] / fastest['latency_ms_median']:.1f}x torch)" if "torch" in got else ""
            lines.append(f"| {model} | {fastest['gflops']:.1f} | {' | '.join(cells)} | {fastest['backend']}{speedup} |")
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file; existing rows are kept and skipped")
    parser.add_argument("--models", nargs="*", help="default: every registered model, cheapest first")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches after the first call")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(360, 480), (512, 512)], help="HxW")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    args = parser.parse_args()
    missing = {e: m for e in args.engines for m in NEEDS.get(e, ()) if importlib.util.find_spec(m) is None}
    for engine, module in missing.items():
        print(f"skipping {engine}: {module} is not installed (pip install \"semseg[dev]\")", file=sys.stderr)
    args.engines = [e for e in args.engines if e not in missing]
    models = args.models or sorted(list_models(), key=lambda m: model_cost(m, num_classes=21, size=(512, 512))["gflops"])
    done = {}
    if args.out.exists():
        done = {key(row): row for row in map(json.loads, args.out.read_text().splitlines())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for model in models:
        for size in args.sizes:
            for batch in args.batches:
                for backend in args.engines:
                    wanted = (model, f"{size[0]}x{size[1]}", batch, backend)
                    if wanted in done:
                        continue
                    row = benchmark(model, size=size, batch=batch, backend=backend, repeats=args.repeats,
                                    warmup=args.warmup)  # fmt: skip
                    done[wanted] = row
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(table([row]).splitlines()[-1], flush=True)
    rows = [done[k] for k in sorted(done, key=lambda k: (models.index(k[0]) if k[0] in models else 99, k[1:]))]
    print(table(rows))
    print(side_by_side(rows, models, tuple(args.engines)))


if __name__ == "__main__":
    main()
