"""Every registered model exports to ONNX with dynamic batch, height and width, and ONNX
Runtime then gives PyTorch's logits at sizes the export never saw (odd, not divisible by
the pyramid bins or the output stride)."""

from __future__ import annotations

import pytest
import torch

import semseg

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DYNAMIC = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}


@pytest.mark.parametrize("name", semseg.list_models())
def test_onnx_export_matches_pytorch_at_new_sizes(name, tiny, tmp_path):
    torch.manual_seed(0)
    model = semseg.create_model(name, num_classes=3, **tiny(name)).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"], dynamic_axes=DYNAMIC,
    )  # fmt: skip
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 97, 131), (1, 3, 33, 47)]:
        x = torch.randn(*shape)
        (y,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-4, atol=2e-4)
