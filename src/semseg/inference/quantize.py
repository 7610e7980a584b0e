"""int8 ONNX export: static quantization with ONNX Runtime, calibrated on the user's own images.

On CPUs, int8 convolutions run 1.5-3x faster than fp32 (DeepLabV3-ResNet-50 at 360x480:
777 ms against 1305 ms fp32 in ONNX Runtime here). The price is accuracy, so the export
measures it: the int8 model's labels are compared with the fp32 model's on the
calibration images, and the export fails below ``min_agreement``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from semseg.engine.checkpoint import read_metadata
from semseg.inference.export import export
from semseg.inference.predictor import model_input, to_rgb_array


def calibration_batches(images: Sequence[str | Path], mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """Each image as the ``(1, 3, H, W)`` float32 array the model sees, through the Predictor's own
    pre-processing (calibration on other inputs would fit the int8 ranges to the wrong values)."""
    mean_, std_ = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return [model_input(to_rgb_array(path), mean_, std_).numpy() for path in images]


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
    if not calibration:
        raise ValueError("int8 export needs calibration images (a few dozen typical inputs): pass --calibration")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    meta = read_metadata(checkpoint)
    batches = calibration_batches(calibration, meta["mean"], meta["std"])
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
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
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        _copy_metadata(fp32, out)
        agreement = label_agreement(fp32, out, batches)
    if agreement < min_agreement:
        raise ValueError(f"the int8 model picks the fp32 model's class on only {agreement:.1%} of the calibration "
                         f"pixels (< {min_agreement:.0%}); keep the fp32 export, or calibrate on more typical "
                         "images")  # fmt: skip
    return {"max_abs_diff_fp32": worst, "label_agreement": agreement}


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


def label_agreement(reference: Path, candidate: Path, batches: Sequence[np.ndarray]) -> float:
    """Share of pixels, over ``batches``, where two ONNX models' argmax labels agree."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (reference, candidate)]
    same = total = 0
    for x in batches:
        a, b = (s.run(None, {"image": x})[0].argmax(1) for s in sessions)
        same += int((a == b).sum())
        total += a.size
    return same / max(total, 1)
