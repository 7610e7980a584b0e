"""The ``semseg`` command: each subcommand parses its arguments and calls library code."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from semseg import __version__
from semseg.demo import DemoConfig, run_demo
from semseg.inference.backends import BACKENDS, BENCHMARK_ENGINES

BACKEND_HELP = ("auto (default): OpenVINO where installed (a checkpoint on the CPU is converted once and cached), "
                "else ONNX Runtime for .onnx files and torch channels-last for checkpoints")  # fmt: skip


_OVERRIDE = re.compile(r"--[A-Za-z_][\w.]*=.*")


def _number_type(convert: Any, ok: Any, name: str, bounds: str = "") -> Any:
    """An argparse ``type``: ``convert(text)`` where ``ok`` holds, else "expected NAME[BOUNDS], got ..."."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not ok(value):  # NaN fails every bound
            raise argparse.ArgumentTypeError(f"expected {name}{bounds}, got {value}")
        return value

    return parse


_positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
_positive_float = _number_type(float, lambda v: 0 < v < math.inf, "a positive number")
# --min-agreement: NaN would pass every comparison, 2 fail only after the whole export.
_share = _number_type(float, lambda v: 0 <= v <= 1, "a share between 0 and 1", " (e.g. 0.95)")
_port = _number_type(int, lambda v: 0 <= v <= 65535, "a port number", " in 0..65535")  # 0: any free port


def _device(text: str) -> str:
    """:func:`~semseg.engine.distributed.check_device` for argparse: a device this machine has."""
    from semseg.engine.distributed import check_device

    try:
        return check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("; use cpu", "; use --device cpu")) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    config = DemoConfig(epochs=args.epochs, train_size=args.train_size, val_size=args.val_size, seed=args.seed)
    result = run_demo(args.out, config, progress=not args.quiet)
    print(f"val mIoU {result['mIoU']:.4f}, pixel accuracy {result['pixel_accuracy']:.4f} "
          f"in {result['seconds']:.0f} s; outputs in {args.out}/")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from semseg.allocator import keep_freed_memory
    from semseg.config import load_config
    from semseg.engine.trainer import fit

    config = load_config(args.config, args.overrides)
    keep_freed_memory()
    result = fit(config, resume=args.resume, overwrite=args.overwrite, stop_after=args.stop_after,
                 progress=not args.quiet)
    print(_train_summary(result, config.epochs, config.out))
    return 0


def _train_summary(result: dict[str, Any], epochs: int, out: str) -> str:
    """The line ``semseg train`` ends with: the last score, or where the run stands when it has none."""
    done = result["history"][-1]["epoch"] if result["history"] else 0
    best = f"best val mIoU {result['best_mIoU']:.4f}" if math.isfinite(result["best_mIoU"]) else "not validated yet"
    if not result["epochs_run"]:
        return f"{out}/ already holds {done} epochs of the recipe's {epochs} ({best}); nothing to train: raise --epochs to go on"
    last = f"val mIoU {result['mIoU']:.4f}, " if "mIoU" in result else ""
    if done < epochs:  # --stop-after
        return f"stopped after epoch {done} of {epochs} ({last}{best}); --resume continues it; checkpoints in {out}/"
    return f"{last}{best}; checkpoints in {out}/"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from semseg.inference.backends import choose_backend
    from semseg.inference.evaluation import evaluate_checkpoint, per_class_table

    backend = choose_backend(args.checkpoint, args.backend, args.device)
    print(f"backend: {backend}")
    metrics = evaluate_checkpoint(args.checkpoint, args.data, root=args.root, split=args.split, device=args.device,
                                  backend=backend, tile=args.tile, flip=args.flip, scales=args.scales, out=args.out,
                                  progress=not args.quiet, input_scale=args.input_scale)  # fmt: skip
    print(per_class_table(metrics))
    if args.out:
        print(f"wrote metrics.json, per_class.md, confusion.png and worst/ to {args.out}/")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from semseg.engine import distributed
    from semseg.inference.predict import predict_files
    from semseg.inference.predictor import Predictor

    # Under torchrun each process segments its share of the inputs on its own device; rank 0 reports.
    dist = distributed.setup(args.device)
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=dist.device, backend=args.backend,
                                              tile=args.tile, flip=args.flip, scales=args.scales,
                                              input_scale=args.input_scale)  # fmt: skip
        if dist.is_main:
            print(f"backend: {predictor.backend}" + (f", {dist.world_size} processes" if dist.world_size > 1 else ""))
        summary = predict_files(predictor, args.inputs, args.out, overlays=not args.no_overlay,
                                cutout_classes=args.cutout, probs=args.probs, max_pixels=args.max_pixels,
                                progress=not args.quiet and dist.is_main, rank=dist.rank,
                                world_size=dist.world_size)  # fmt: skip
    finally:
        distributed.teardown()
    if not dist.is_main:
        return 1 if summary["failed"] else 0
    for item, reason in summary["failed"].items():
        print(f"semseg predict: skipped {item}: {reason}", file=sys.stderr)
    for item, video in summary["videos"].items():
        print(f"{item}: {video['frames']} frames at {video['fps']:.1f} fps -> {args.out}/{video['output']}")
        if "declared_frames" in video:
            print(f"semseg predict: warning: {item}: only {video['frames']} of the {video['declared_frames']} frames "
                  "its header declares could be decoded; the file may be cut short", file=sys.stderr)  # fmt: skip
    print(f"{summary['images']} image(s) and {len(summary['videos'])} video(s) segmented, "
          f"{len(summary['failed'])} failed; outputs in {args.out}/")
    return 1 if summary["failed"] else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from semseg.inference.export import export, openvino_path

    if args.int8:
        if args.format not in ("onnx", "openvino"):
            raise ValueError("--int8 applies to --format onnx (ONNX Runtime) and --format openvino (NNCF) only")
        from semseg.inference.predict import expand_inputs, is_video
        from semseg.inference.quantize import export_int8, export_int8_openvino

        found, missing = expand_inputs(args.int8, arrays=True)  # .npy: calibration images of a bands model
        images = [path for path in found if not is_video(path)]
        if missing:
            raise FileNotFoundError(f"no calibration images at {', '.join(missing)}")
        quantize = export_int8_openvino if args.format == "openvino" else export_int8
        result = quantize(args.checkpoint, args.out, images[: args.calibration_count], min_agreement=args.min_agreement)
        written = openvino_path(args.checkpoint, args.out) if args.format == "openvino" else args.out
        print(f"wrote {written} (int8, calibrated on {min(len(images), args.calibration_count)} images); fp32 parity "
              f"max abs diff {result['max_abs_diff_fp32']:.2e}; int8 labels agree with fp32 on "
              f"{result['label_agreement']:.2%} of calibration pixels")  # fmt: skip
        return 0
    worst = export(args.checkpoint, args.out, fmt=args.format)
    written = openvino_path(args.checkpoint, args.out) if args.format == "openvino" else args.out
    print(f"wrote {written}{' and its .bin' if args.format == 'openvino' else ''}; parity with PyTorch on 3 input "
          f"sizes: max abs diff {worst:.2e}")  # fmt: skip
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from semseg.serving.app import ServeSettings, serve
    except ImportError as exc:
        raise ValueError(f"serving needs FastAPI and uvicorn ({exc.name} is missing): pip install \"semseg[serve]\"") from None
    settings = ServeSettings(checkpoint=args.checkpoint, backend=args.backend, device=args.device,
                             threads=args.threads or max(1, (os.cpu_count() or 1) // args.workers),
                             max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                             max_queue=args.max_queue, body_timeout=args.body_timeout)  # fmt: skip
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"semseg serve: warning: listening on {args.host}, beyond this machine; the API has no "
              "authentication, so put it behind a proxy that has", file=sys.stderr)  # fmt: skip
    serve(settings, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from semseg.inference.benchmark import benchmark

    r = benchmark(args.model, size=args.size, batch=args.batch, backend=args.backend, channels_last=args.channels_last,
                  bf16=args.bf16, repeats=args.repeats)  # fmt: skip
    print(f"{r['model']} {r['size']} batch {r['batch']} ({r['backend']}"
          f"{', bf16' if args.bf16 else ''}): {r['params_M']:.2f}M params, {r['gflops']:.1f} GFLOPs/image")
    print(f"latency median {r['latency_ms_median']:.1f} ms, p90 {r['latency_ms_p90']:.1f} ms; "
          f"{r['images_per_s']:.2f} images/s; {r['achieved_gflops_per_s']:.1f} GFLOP/s = "
          f"{100 * r['share_of_peak']:.0f}% of the measured peak {r['peak_gflops_per_s']:.1f} GFLOP/s; "
          f"first call (export, compile) {r['compile_s']:.1f} s")
    return 0


INPUT_SCALE_HELP = ("resize inputs by this factor before the model, and its output back (default: the "
                    "checkpoint's data.infer_scale, 1 for most)")


def _input_scale_value(text: str) -> float:
    from semseg.config import MAX_INFER_SCALE

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 2, got {text!r}") from None
    if not 0 < value <= MAX_INFER_SCALE:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_INFER_SCALE}], got {text!r}")
    return value


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated scales such as 0.75,1,1.25, got {text!r}") from None
    if not all(0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(f"scales must be positive and finite, got {text!r}")
    return values


def _cmd_data_check(args: argparse.Namespace) -> int:
    from semseg.data.check import run_check_command

    return run_check_command(args.target, root=args.root, out=args.out)


def _cmd_models(args: argparse.Namespace) -> int:
    from semseg.profile import model_cost
    from semseg.registry import list_models

    h, w = args.size
    print(f"{'model':<16}{'params (M)':>12}{f'GFLOPs @{h}x{w}':>18}")
    for name in list_models():
        cost = model_cost(name, num_classes=args.num_classes, size=(h, w))
        print(f"{name:<16}{cost['params'] / 1e6:>12.2f}{cost['gflops']:>18.1f}")
    return 0


def _cmd_pretrained(args: argparse.Namespace) -> int:
    from semseg.pretrained import list_pretrained

    shipped = list_pretrained()
    if not shipped:
        print("no models ship with this version of semseg yet")
        return 0
    for m in shipped:
        print(f"{m.name}: {m.architecture} on {m.dataset} ({len(m.classes)} classes: {', '.join(m.classes)}), "
              f"val mIoU {m.val_mIoU:.4f}, {m.size_mb:.1f} MB\n  reproduce: {m.command}\n  model card: {m.card}")
    return 0


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x512, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"height and width must be >= 32, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="semseg", description="Semantic segmentation: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"semseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    defaults = DemoConfig()
    demo = sub.add_parser("demo", help="train a small U-Net on the built-in shapes dataset, evaluate and predict")
    demo.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help=f"default: {defaults.epochs}")
    demo.add_argument("--train-size", type=_positive_int, default=defaults.train_size,
                      help=f"training images (default: {defaults.train_size})")
    demo.add_argument("--val-size", type=_positive_int, default=defaults.val_size,
                      help=f"validation images (default: {defaults.val_size})")
    demo.add_argument("--seed", type=int, default=defaults.seed, help=f"default: {defaults.seed}")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser(
        "train", help="train a model from a YAML recipe",
        description="Train from a YAML recipe; override any key with --section.key=value (e.g. --optim.lr=0.01).",
    )  # fmt: skip
    train.add_argument("config", help="YAML recipe (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue from <out>/last.* exactly where it stopped")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in the out: folder (a fresh run refuses one otherwise)")
    train.add_argument("--stop-after", type=_positive_int, metavar="EPOCHS",
                       help="stop after this many epochs of this run (resume later with --resume)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train, overrides=[])

    ev = sub.add_parser("evaluate", help="score a checkpoint on a dataset split (mIoU, per-class IoU, ...)")
    ev.add_argument("checkpoint", help="a .safetensors file written by semseg train")
    ev.add_argument("--data", required=True, help="a dataset description .yaml, or camvid | voc | cityscapes | ade20k | folder")
    ev.add_argument("--root", help="dataset root (for the named formats)")
    ev.add_argument("--split", default="val", help="default: val")
    ev.add_argument("--tile", type=_positive_int, help="sliding-window size (e.g. 512) for large images")
    ev.add_argument("--flip", action="store_true", help="test-time augmentation: average with the mirrored image")
    ev.add_argument("--scales", type=_scales, default=(1.0,), help="test-time scales, e.g. 0.5,0.75,1,1.25,1.5,1.75 "
                    "(times the checkpoint's input scale)")
    ev.add_argument("--input-scale", type=_input_scale_value, help=INPUT_SCALE_HELP)
    ev.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    ev.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    ev.add_argument("--out", help="folder for metrics.json, per_class.md and confusion.png")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="segment images and videos: palette masks, overlays, cut-outs, overlay videos")
    pr.add_argument("checkpoint", help="a .safetensors file written by semseg train or demo, or an .onnx / "
                    "OpenVINO .xml file written by semseg export")
    pr.add_argument("inputs", nargs="+", help="image or video (.mp4 .avi .mov .mkv) files, folders or globs; "
                    "GeoTIFFs (and TIFFs over --max-pixels) are streamed window by window to label GeoTIFFs, "
                    "masks/STEM.tif (pip install 'semseg[geo]')")
    pr.add_argument("--out", required=True,
                    help="output folder (masks/, overlays/, cutouts/, probs/, videos/, summary.json)")
    pr.add_argument("--cutout", nargs="+", default=[], metavar="CLASS",
                    help="write RGBA cut-outs keeping these classes (images only)")
    pr.add_argument("--no-overlay", action="store_true",
                    help="skip the colour overlays of images (videos always get their overlay video)")
    pr.add_argument("--probs", action="store_true",
                    help="also write probs/STEM.npy per image: float16 class probabilities of shape "
                         "(classes, H, W), summing to 1 over classes (images only, not videos); for a "
                         "GeoTIFF probs/STEM.tif, one uint8 band per class holding round(255 x p)")
    pr.add_argument("--tile", type=_positive_int,
                    help="sliding-window size (e.g. 512); without it, images over 2048x2048 = 4.2 megapixels "
                         "run in 1024x1024 windows")  # fmt: skip
    pr.add_argument("--max-pixels", type=_positive_int, default=100_000_000,
                    help="skip images larger than this, width x height, read from the header (default: 100 "
                    "megapixels); larger TIFFs are streamed to label GeoTIFFs instead")
    pr.add_argument("--flip", action="store_true", help="test-time augmentation: average with the mirrored image")
    pr.add_argument("--scales", type=_scales, default=(1.0,), help="test-time scales, e.g. 0.75,1,1.25 "
                    "(times the checkpoint's input scale)")
    pr.add_argument("--input-scale", type=_input_scale_value, help=INPUT_SCALE_HELP)
    pr.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    pr.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, ... (default: cpu)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_predict)

    ex = sub.add_parser("export", help="export a checkpoint to ONNX, TorchScript or OpenVINO IR (dynamic batch/H/W), "
                        "with a parity check")  # fmt: skip
    ex.add_argument("checkpoint")
    ex.add_argument("--format", choices=["onnx", "torchscript", "openvino"], default="onnx")
    ex.add_argument("--out", required=True,
                    help="output file (.onnx, .pt; openvino: FILE.xml, or a folder for CHECKPOINT_STEM.xml + .bin)")
    ex.add_argument("--int8", nargs="+", metavar="IMAGES",
                    help="quantize to int8, calibrated on these images, folders or globs: static ONNX Runtime "
                    "quantization for --format onnx, NNCF for --format openvino (pip install 'semseg[openvino-int8]')")
    ex.add_argument("--calibration-count", type=_positive_int, default=32, help="calibration images used (default: 32)")
    ex.add_argument("--min-agreement", type=_share, default=0.95,
                    help="fail when int8 and fp32 labels agree on fewer calibration pixels (default: 0.95)")
    ex.set_defaults(func=_cmd_export)

    sv = sub.add_parser("serve", help="serve a checkpoint or ONNX file over HTTP (API, OpenAPI docs, web page)")
    sv.add_argument("checkpoint", help=".safetensors checkpoint, or .onnx / OpenVINO .xml file from semseg export")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    sv.add_argument("--port", type=_port, default=8000)
    sv.add_argument("--workers", type=_positive_int, default=1, help="server processes, each with its own model")
    sv.add_argument("--threads", type=_positive_int,
                    help="inference threads per worker, for every backend (default: cores / workers)")
    sv.add_argument("--backend", choices=BACKENDS, default="auto", help=BACKEND_HELP)
    sv.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, ... (torch backend)")
    sv.add_argument("--max-upload-mb", type=_positive_float, default=20.0, help="largest request body (default: 20 MiB)")
    sv.add_argument("--max-pixels", type=_positive_int, default=25_000_000,
                    help="largest image, width x height (default: 25 megapixels)")
    sv.add_argument("--max-queue", type=_positive_int, default=32,
                    help="requests allowed to wait for the model, besides the one running, before 503 (default: 32)")
    sv.add_argument("--body-timeout", type=_positive_float, default=30.0,
                    help="seconds to receive a request body before answering 408 (default: 30)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.set_defaults(func=_cmd_serve)

    bm = sub.add_parser("benchmark", help="latency, throughput and share of this machine's peak for a model")
    bm.add_argument("--model", required=True)
    bm.add_argument("--size", type=_size, default=(512, 512), help="HxW (default: 512x512)")
    bm.add_argument("--batch", type=_positive_int, default=1)
    bm.add_argument("--backend", choices=BENCHMARK_ENGINES, default="auto",
                    help="auto (default): openvino where installed, else torch-channels-last; also torch-compile "
                         "and openvino-int8 (calibrated on random inputs: its speed, not its accuracy)")
    bm.add_argument("--channels-last", action="store_true")
    bm.add_argument("--bf16", action="store_true", help="bfloat16 autocast (torch backend)")
    bm.add_argument("--repeats", type=_positive_int, default=10,
                    help="timed batches after the first call and 2 warm-up ones")
    bm.set_defaults(func=_cmd_benchmark)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    check = data_sub.add_parser(
        "check", help="find label mistakes: missing pairs, unreadable files, size mismatches, undeclared values",
        description="Check a dataset and print counts, a per-class pixel histogram and suggested class weights. "
        "Exits 1 if any error is found.",
    )  # fmt: skip
    check.add_argument("target", help="a dataset description .yaml, or camvid | voc | cityscapes | ade20k | folder")
    check.add_argument("--root", help="dataset root (for the named formats)")
    check.add_argument("--out", help="folder for histogram.png and report.json")
    check.set_defaults(func=_cmd_data_check)

    pretrained = sub.add_parser("pretrained", help="list the models shipped inside semseg (usable by name as CHECKPOINT)")
    pretrained.set_defaults(func=_cmd_pretrained)
    models = sub.add_parser("models", help="list the registered models with parameters and GFLOPs")
    models.add_argument("--num-classes", type=_positive_int, default=21)
    models.add_argument("--size", type=_size, default=(512, 512), help="input size for GFLOPs (default: 512x512)")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for usage errors, 1 for failures)."""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is printed escaped, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [e for e in extra if args.command != "train" or not _OVERRIDE.fullmatch(e)]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}"
                         + (" (config overrides look like --section.key=value)" if args.command == "train" else ""))
        args.overrides = extra
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError, FloatingPointError) as exc:  # OSError: a file in a folder's place, ...
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"semseg {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"semseg {args.command}: interrupted", file=sys.stderr)
        return 130
