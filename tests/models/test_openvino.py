"""Every registered model through ``semseg export --format openvino``: the IR gives PyTorch's
logits (within 1e-3) at sizes the export never saw, and the Predictor on it gives PyTorch's
labels on at least 99.9% of the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import semseg
from semseg.engine.checkpoint import save_weights
from semseg.inference.export import export
from semseg.inference.predictor import Predictor, model_input

pytest.importorskip("openvino")
pytest.importorskip("onnx")  # checkpoints reach OpenVINO through an ONNX export

META = {"classes": ["background", "road", "car"], "palette": [[0, 0, 0], [128, 64, 128], [0, 0, 142]],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # fmt: skip
TOLERANCE = 1e-3
MIN_AGREEMENT = 0.999


def structured_image(h: int, w: int) -> np.ndarray:
    """Smooth gradients with a bright square: varied enough for a random model's labels to vary."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], axis=-1)
    rgb[h // 4 : h // 2, w // 4 : w // 2] = 250
    return rgb.astype(np.uint8)


@pytest.mark.parametrize("name", semseg.list_models())
def test_openvino_export_matches_pytorch(name, tiny, tmp_path):
    torch.manual_seed(0)
    model = semseg.create_model(name, num_classes=len(META["classes"]), **tiny(name)).eval()
    checkpoint = save_weights(model, tmp_path / f"{name}.safetensors", **META)
    # 33x47 at batch 1: odd, under every output stride, not divisible by any pyramid bin
    worst = export(checkpoint, tmp_path / "ir", fmt="openvino", check_sizes=((33, 47),), tolerance=TOLERANCE)
    assert 0 <= worst <= TOLERANCE
    openvino = Predictor.from_checkpoint(tmp_path / "ir" / f"{name}.xml")
    assert openvino.backend == "openvino" and openvino.classes == META["classes"]
    rgb = structured_image(97, 131)
    x = model_input(rgb, openvino.mean, openvino.std)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(openvino.model(x), expected, rtol=0, atol=TOLERANCE)
    agreement = (openvino(rgb) == expected[0].argmax(0).numpy()).mean()
    assert agreement >= MIN_AGREEMENT, f"{name}: labels agree on {agreement:.4%} of pixels"
