"""Export a checkpoint to ONNX or TorchScript with dynamic batch/height/width, then prove parity.

The class names, palette and normalisation travel inside the file (ONNX ``metadata_props``;
TorchScript ``extra_files``), so a deployment needs nothing but the exported model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from semseg.engine.checkpoint import load_model

META_KEYS = ("classes", "palette", "mean", "std", "model_config")
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

    Raises ``ValueError`` if that difference exceeds ``tolerance``.
    """
    model, meta = load_model(checkpoint)
    model.eval()
    metadata = {key: json.dumps(meta[key]) for key in META_KEYS if key in meta}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporters announce their deprecation
        if fmt == "onnx":
            _export_onnx(model, example, out, metadata)
            run = _onnx_runner(out)
        elif fmt == "torchscript":
            # No check_trace: it reruns the example input (doubling the trace time, ~2 s a model),
            # while the parity check below runs sizes and batches the trace never saw.
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(out), _extra_files={"semseg.json": json.dumps(metadata)})
            run = _torchscript_runner(out)
        else:
            raise ValueError(f"format must be onnx or torchscript, got {fmt!r}")
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for batch, (h, w) in enumerate(check_sizes, start=1):
        x = torch.randn(min(batch, 2), 3, h, w, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        worst = max(worst, float(np.abs(run(x.numpy()) - expected).max()))
    if worst > tolerance:
        raise ValueError(f"exported {fmt} model differs from PyTorch by up to {worst:.2e} (> {tolerance:.0e})")
    return worst


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, metadata: dict[str, str]) -> None:
    import onnx

    torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes=DYNAMIC)  # fmt: skip
    proto = onnx.load(str(out))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"semseg.{key}", value
    onnx.save(proto, str(out))


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


class OnnxModel:
    """An exported ONNX file run by ONNX Runtime, callable like the PyTorch model (tensor in, logits out)."""

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"no such ONNX file: {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own unrelated classes (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{path} is not a model ONNX Runtime can load ({exc}); "
                             "write one with `semseg export --format onnx`") from None  # fmt: skip
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("classes", "palette", "mean", "std") if f"semseg.{k}" not in props]
        if missing:
            raise ValueError(f"{path} lacks semseg metadata ({', '.join(missing)}); export it with `semseg export`")
        self.metadata = {k.removeprefix("semseg."): json.loads(v) for k, v in props.items() if k.startswith("semseg.")}

    def to(self, device: torch.device | str) -> OnnxModel:
        return self

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"image": x.detach().cpu().numpy()})[0])
