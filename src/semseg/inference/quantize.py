"""int8 export: static post-training quantization calibrated on the user's own images.

Two engines: ONNX Runtime's quantizer writes an int8 ``.onnx`` (:func:`export_int8`), and
OpenVINO's NNCF writes an int8 IR ``.xml`` (:func:`export_int8_openvino`). On CPUs, int8
convolutions run 1.5-3x faster than fp32 (DeepLabV3-ResNet-50 at 360x480: 777 ms against
1305 ms fp32 in ONNX Runtime here). The price is accuracy, so both exports measure it: the
int8 model's labels are compared with the fp32 model's on the calibration images, and the
export fails below ``min_agreement``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semseg.engine.checkpoint import infer_scale, read_metadata
from semseg.engine.evaluate import resize_input
from semseg.inference.backends import OnnxRuntimeModel, OpenVinoModel, openvino_core
from semseg.inference.export import export, openvino_path, staged
from semseg.inference.predictor import MIN_SIZE, model_input, read_pixels


def calibration_batches(images: Sequence[str | Path], meta: dict) -> list[np.ndarray]:
    """Each image as the ``(1, C, H, W)`` float32 array the model of checkpoint metadata ``meta`` sees,
    through the Predictor's own pre-processing and at its ``infer_scale`` (calibration on other inputs
    would fit the int8 ranges to the wrong values)."""
    bands = meta.get("bands")
    mean, std = torch.tensor(meta["mean"]).view(1, -1, 1, 1), torch.tensor(meta["std"]).view(1, -1, 1, 1)
    pixel_scale = 255.0 if bands is None else 1.0
    fill = meta["mean"] if bands is not None else None
    size = infer_scale(meta, "the calibration metadata")
    return [resize_input(model_input(read_pixels(path, bands, fill=fill), mean, std, pixel_scale), size, MIN_SIZE).numpy()
            for path in images]  # fmt: skip


def export_int8(
    checkpoint: str | Path,
    out: str | Path,
    calibration: Sequence[str | Path],
    *,
    min_agreement: float = 0.95,
) -> dict[str, float]:
    """Write an int8 ONNX model of ``checkpoint`` to ``out``, calibrated on the ``calibration`` images.

    Returns the fp32 export's largest logit difference from PyTorch and the share of
    calibration pixels where int8 and fp32 pick the same class; raises ``ValueError`` when
    that share is under ``min_agreement``.
    """
    _need_calibration(calibration)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    meta = read_metadata(checkpoint)
    batches = calibration_batches(calibration, meta)
    out = Path(out)
    with staged(out, checkpoint) as int8, tempfile.TemporaryDirectory() as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        worst = export(checkpoint, fp32, fmt="onnx")
        # ONNX shape inference and graph clean-up, as ORT advises; its symbolic shape inference
        # (meant for transformers) fails on some of our dynamic-size graphs, so it is skipped.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items: Iterator[np.ndarray] = iter(batches)

            def get_next(self) -> dict | None:
                item = next(self.items, None)
                return None if item is None else {"image": item}

        # QDQ with per-channel int8 weights and uint8 activations: ONNX Runtime's recommended CPU recipe.
        quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        _copy_metadata(fp32, int8)
        agreement = label_agreement(OnnxRuntimeModel(fp32), OnnxRuntimeModel(int8), batches)
        _check_agreement(agreement, min_agreement, out)
    return {"max_abs_diff_fp32": worst, "label_agreement": agreement}


def export_int8_openvino(
    checkpoint: str | Path,
    out: str | Path,
    calibration: Sequence[str | Path],
    *,
    min_agreement: float = 0.95,
) -> dict[str, float | str]:
    """Write an int8 OpenVINO IR of ``checkpoint`` with NNCF, calibrated on the ``calibration`` images.

    ``out`` is an ``.xml`` path or a folder, as for the fp32 OpenVINO export. NNCF's default
    (performance) preset: symmetric int8 weights and activations, which the CPU plugin runs
    with VNNI / AVX2 int8 kernels. Returns the fp32 IR's parity with PyTorch, the label
    agreement and the written path; raises ``ValueError`` below ``min_agreement``.
    """
    _need_calibration(calibration)
    _, ov = _nncf_openvino()
    meta = read_metadata(checkpoint)
    batches = calibration_batches(calibration, meta)
    out = openvino_path(checkpoint, out)
    with staged(out, checkpoint) as int8, tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.xml"
        worst = export(checkpoint, fp32, fmt="openvino")
        quantized = quantize_openvino(fp32, batches)
        ov.save_model(quantized, str(int8), compress_to_fp16=False)
        agreement = label_agreement(OpenVinoModel(fp32), OpenVinoModel(int8), batches)
        _check_agreement(agreement, min_agreement, out)
    return {"max_abs_diff_fp32": worst, "label_agreement": agreement, "path": str(out)}


def quantize_openvino(model: Any, batches: Sequence[np.ndarray]) -> Any:
    """``model`` (an ``openvino.Model``, or a file OpenVINO reads) quantized to int8 by NNCF, its ranges
    fitted on ``batches`` (model inputs). NNCF's default (performance) preset: symmetric int8 weights
    and activations, except the matrix products in :func:`shape_matmuls`."""
    nncf, ov = _nncf_openvino()
    if isinstance(model, (str, Path)):
        model = openvino_core().read_model(str(model))
    _unique_names(model)  # NNCF's ignored scope goes by name
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                              ignored_scope=nncf.IgnoredScope(names=shape_matmuls(model)))  # fmt: skip
    quantized.set_rt_info(json.dumps("int8"), ["semseg", "quantized"])
    return quantized


def shape_matmuls(model: Any) -> list[str]:
    """Names of the MatMuls in an ``openvino.Model`` with an operand built from tensor shapes alone,
    not from pixel values: PSPNet's adaptive pooling (:class:`semseg.models.pspnet.AdaptiveAvgPool`).

    NNCF quantizes their data operand, but OpenVINO's CPU plugin runs a MatMul with one float
    operand in fp32, so it turns that operand back to fp32 where it is produced, and with it the
    concatenation PSPNet's pyramid feeds its 3x3 head convolution, which then ran in fp32: 56% of
    the int8 model's layer time. Left in fp32, these products took 3 of 624 ms and the head runs
    in int8 (PSPNet-ResNet-50 at 360x480, docs/benchmarks.md).
    """
    values: dict[str, bool] = {}  # the node's output depends on pixel values
    shapes: dict[str, bool] = {}  # ... on a tensor's shape (weights depend on neither)
    names: list[str] = []
    for op in model.get_ordered_ops():  # topological order: operands come first
        kind, inputs = op.get_type_name(), [i.get_source_output().get_node().get_name() for i in op.inputs()]
        values[op.get_name()] = kind == "Parameter" or (kind != "ShapeOf" and any(values[i] for i in inputs))
        shapes[op.get_name()] = kind == "ShapeOf" or any(shapes[i] for i in inputs)
        if kind == "MatMul" and any(shapes[i] and not values[i] for i in inputs):
            names.append(op.get_friendly_name())
    return names


def _unique_names(model: Any) -> None:
    """Give each op of an ``openvino.Model`` its own friendly name (a repeat gets ``_`` appended)."""
    seen: set[str] = set()
    for op in model.get_ops():
        name = op.get_friendly_name()
        while name in seen:
            name += "_"
        op.set_friendly_name(name)
        seen.add(name)


def _nncf_openvino() -> tuple[Any, Any]:
    try:
        import nncf
        import openvino
    except ImportError as exc:
        raise ValueError(f"int8 OpenVINO needs OpenVINO and NNCF ({exc.name} is missing): "
                         "pip install \"semseg[openvino-int8]\"") from None  # fmt: skip
    return nncf, openvino


def _need_calibration(calibration: Sequence[str | Path]) -> None:
    if not calibration:
        raise ValueError("int8 export needs calibration images (a few dozen typical inputs): pass --int8 IMAGES")


def _check_agreement(agreement: float, min_agreement: float, out: Path) -> None:
    """Raise when the int8 labels agree too rarely with fp32 (inside :func:`staged`: nothing reaches ``out``)."""
    if agreement < min_agreement:
        raise ValueError(f"the int8 model picks the fp32 model's class on only {agreement:.1%} of the calibration "
                         f"pixels (< {min_agreement:.0%}), so {out} was not kept; keep the fp32 export, or "
                         "calibrate on more typical images")  # fmt: skip


def _copy_metadata(source: Path, target: Path) -> None:
    """The quantizer drops ``metadata_props``: carry semseg's over and mark the model as int8."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    props["semseg.quantized"] = json.dumps("int8")
    model = onnx.load(str(target))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(target))


def label_agreement(reference: Callable[[torch.Tensor], torch.Tensor],
                    candidate: Callable[[torch.Tensor], torch.Tensor], batches: Sequence[np.ndarray]) -> float:  # fmt: skip
    """Share of pixels, over ``batches``, where two models' argmax labels agree."""
    same = total = 0
    for x in batches:
        a, b = (model(torch.from_numpy(x)).argmax(1) for model in (reference, candidate))
        same += int((a == b).sum())
        total += a.numel()
    return same / max(total, 1)
