"""Export a checkpoint to ONNX, TorchScript or OpenVINO IR with dynamic batch/height/width, then prove parity.

The class names, palette and normalisation travel inside the file (ONNX ``metadata_props``;
TorchScript ``extra_files``; OpenVINO rt_info ``semseg/KEY``, all JSON strings), so a deployment
needs nothing but the exported model.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from semseg.engine.checkpoint import load_model
from semseg.inference.backends import META_KEYS, OpenVinoModel, openvino_core
from semseg.paths import check_folder
from semseg.pretrained import resolve_checkpoint

FORMATS = ("onnx", "torchscript", "openvino")
DYNAMIC = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}


def export(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fmt: str = "onnx",
    check_sizes: Sequence[tuple[int, int]] = ((64, 64), (97, 131), (360, 480)),
    tolerance: float = 1e-3,
) -> float:
    """Write ``out`` and return the largest absolute logit difference from PyTorch over ``check_sizes``.

    For ``fmt="openvino"``, ``out`` is the IR's ``.xml`` (its weights go to the ``.bin`` beside it)
    or a folder for ``CHECKPOINT_STEM.xml`` (:func:`openvino_path`). Raises ``ValueError`` if the
    difference exceeds ``tolerance``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model, meta = load_model(checkpoint)
    model.eval()
    metadata = {key: json.dumps(meta[key]) for key in META_KEYS if key in meta}
    out = openvino_path(checkpoint, out) if fmt == "openvino" else Path(out)
    channels = meta["model_config"].get("in_channels", 3)
    example = torch.randn(1, channels, 64, 64)
    with staged(out, checkpoint) as path:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporters announce their deprecation
            if fmt == "onnx":
                _export_onnx(model, example, path, metadata)
                run = _onnx_runner(path)
            elif fmt == "torchscript":
                # No check_trace: it reruns the example input (doubling the trace time, ~2 s a model),
                # while the parity check below runs sizes and batches the trace never saw.
                traced = torch.jit.trace(model, example, check_trace=False)
                torch.jit.save(traced, str(path), _extra_files={"semseg.json": json.dumps(metadata)})
                run = _torchscript_runner(path)
            else:
                _export_openvino(model, example, path, metadata)
                run = _openvino_runner(path)
        worst = 0.0
        generator = torch.Generator().manual_seed(0)
        for batch, (h, w) in enumerate(check_sizes, start=1):
            x = torch.randn(min(batch, 2), channels, h, w, generator=generator)
            with torch.no_grad():
                expected = model(x).numpy()
            worst = max(worst, float(np.abs(run(x.numpy()) - expected).max()))
        del run  # ONNX Runtime and OpenVINO hold the file open (on Windows, a rename would fail)
        if worst > tolerance:
            raise ValueError(f"exported {fmt} model differs from PyTorch by up to {worst:.2e} (> {tolerance:.0e}); "
                             f"nothing was written to {out}")  # fmt: skip
    return worst


@contextlib.contextmanager
def staged(out: Path, checkpoint: str | Path) -> Iterator[Path]:
    """A path to write ``out`` at, in a hidden folder beside it, that replaces ``out`` (an IR's ``.bin``
    first, then its ``.xml``) only when the block ends without an error: an export that fails its
    checks, or is interrupted, never leaves a file at ``out`` (a killed process can leave the hidden
    folder). Refuses an ``out`` that would replace the ``checkpoint`` being exported."""
    source = resolve_checkpoint(checkpoint).resolve()
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the file to write (e.g. {out / 'model.onnx'})")
    # Through links, as writing the file in place would: `current.onnx -> v3.onnx` updates v3.onnx.
    files = tuple(Path(os.path.realpath(f)) for f in ((out.with_suffix(".bin"), out) if out.suffix.lower() == ".xml" else (out,)))
    for target in files:
        if target == source:
            raise ValueError(f"--out {target} is the checkpoint being exported; write the export to another file")
    check_folder(out.parent, f"--out {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=files[-1].parent, prefix=".semseg-export-") as tmp:
        path = Path(tmp) / out.name
        yield path
        for target, written in zip(files, (path.with_suffix(".bin"), path) if len(files) == 2 else (path,)):
            os.replace(written, target)


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, str]) -> None:
    import onnx

    torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes=DYNAMIC)  # fmt: skip
    proto = onnx.load(str(out))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"semseg.{key}", value
    onnx.save(proto, str(out))


def openvino_path(checkpoint: str | Path, out: str | Path) -> Path:
    """Where ``semseg export --format openvino --out OUT`` writes: ``OUT`` if it ends in ``.xml``,
    else ``OUT/CHECKPOINT_STEM.xml``."""
    out = Path(out)
    return out if out.suffix.lower() == ".xml" else out / f"{Path(checkpoint).stem}.xml"


def _export_openvino(model: torch.nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, str]) -> None:
    """OpenVINO IR by way of the ONNX export: the graph ``--format onnx`` writes and tests, and (export
    plus OpenVINO reading it) faster than OpenVINO's own PyTorch converter ``ov.convert_model`` for
    12 of the 13 models of a one-off comparison here (e.g. LR-ASPP 1.5 s against 6.8 s; VGG16-FCN-8s
    16 s against 7.5 s), with the same logits. The weights stay fp32 (``save_model`` would halve
    them to fp16 by default)."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        _export_onnx(model, example, onnx_file, {})
        converted = openvino_core().read_model(str(onnx_file))
        for key, value in metadata.items():
            converted.set_rt_info(value, ["semseg", key])
        ov.save_model(converted, str(out), compress_to_fp16=False)


def _openvino_runner(path: Path):
    model = OpenVinoModel(path)
    return lambda x: model(torch.from_numpy(x)).numpy()


def _torchscript_runner(path: Path):
    loaded = torch.jit.load(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return loaded(torch.from_numpy(x)).numpy()

    return run


def _onnx_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]
