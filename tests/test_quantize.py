"""int8 export: calibrated on images, metadata kept, runs in the Predictor, and refuses a poor match."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import semseg
from semseg.cli import main
from semseg.engine.checkpoint import save_weights
from semseg.inference.backends import openvino_core
from semseg.inference.predictor import Predictor
from semseg.inference.quantize import calibration_batches, export_int8, label_agreement

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = semseg.create_model("unet", num_classes=3, base_channels=8, depth=2).eval()
    return save_weights(model, tmp_path / "m.safetensors", classes=["a", "b", "c"],
                        palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]], mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "calibration"
    folder.mkdir()
    yy, xx = np.mgrid[0:48, 0:64]
    for i in range(4):
        rgb = np.stack([(xx * (3 + i)) % 256, (yy * (4 + i)) % 256, ((xx + yy) * 2 + 40 * i) % 256], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(folder / f"{i}.png")
    return sorted(folder.iterdir())


def test_calibration_batches_are_normalised_like_the_predictor(images):
    batch = calibration_batches(images[:1], {"mean": [0.5] * 3, "std": [0.25] * 3})[0]
    rgb = np.array(Image.open(images[0]))
    assert batch.shape == (1, 3, 48, 64) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 1], (rgb[..., 1] / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-5)
    doubled = calibration_batches(images[:1], {"mean": [0.5] * 3, "std": [0.25] * 3, "infer_scale": 2.0})[0]
    assert doubled.shape == (1, 3, 96, 128)  # what a model trained with data.infer_scale: 2 sees
    expected = torch.nn.functional.interpolate(torch.from_numpy(batch), size=(96, 128), mode="bilinear",
                                               align_corners=False)  # fmt: skip
    np.testing.assert_allclose(doubled, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_int8_export_keeps_metadata_and_runs_in_the_predictor(checkpoint, images, tmp_path):
    out = tmp_path / "m.int8.onnx"
    result = export_int8(checkpoint, out, images, min_agreement=0.0)
    assert result["max_abs_diff_fp32"] <= 1e-3 and result["label_agreement"] > 0.5
    proto = onnx.load(str(out))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized, not a copy of the fp32 graph
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["semseg.classes"] == ["a", "b", "c"] and props["semseg.quantized"] == "int8"
    predictor = Predictor.from_checkpoint(out, backend="onnxruntime")
    labels = predictor(images[0])
    assert labels.shape == (48, 64) and labels.max() < 3
    fp32 = Predictor.from_checkpoint(checkpoint)(images[0])
    assert (labels == fp32).mean() > 0.5  # int8 tracks fp32; the exact share is reported by the export


def test_label_agreement_is_the_share_of_pixels_with_the_same_argmax():
    reference = lambda x: torch.stack([x[:, 0], -x[:, 0]], 1)  # noqa: E731  class 0 where channel 0 > 0
    candidate = lambda x: torch.stack([x[:, 0] - 0.5, -x[:, 0]], 1)  # noqa: E731  class 1 where it is < 0.25
    x = np.linspace(-1, 1, 2 * 3 * 4 * 10, dtype=np.float32).reshape(2, 3, 4, 10)
    a = (x[:, 0] > 0).astype(int)
    b = (x[:, 0] - 0.5 > -x[:, 0]).astype(int)
    assert label_agreement(reference, candidate, [x]) == pytest.approx((a == b).mean())
    assert 0.0 < label_agreement(reference, candidate, [x]) < 1.0
    assert label_agreement(reference, reference, [x, x]) == 1.0


def test_int8_export_refuses_when_labels_disagree_too_often(checkpoint, images, tmp_path):
    with pytest.raises(ValueError, match=r"on only \d+\.\d% of the calibration pixels \(< 101%\), so .* was not kept"):
        export_int8(checkpoint, tmp_path / "m.onnx", images, min_agreement=1.01)
    assert not (tmp_path / "m.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".semseg-export-")]


def test_int8_export_makes_the_folders_of_its_path(checkpoint, images, tmp_path):
    out = tmp_path / "new" / "sub" / "m8.onnx"
    export_int8(checkpoint, out, images)
    assert onnx.load(str(out)).graph.node and sorted(p.name for p in out.parent.iterdir()) == ["m8.onnx"]


def _semseg(*args: str) -> subprocess.CompletedProcess:
    # NNCF runs in a child process: importing it changes process-wide state (threads, torch hooks)
    # that the rest of the suite, which shares this process, should not inherit.
    return subprocess.run([sys.executable, "-m", "semseg", *args], capture_output=True, text=True)


def test_openvino_int8_export_is_quantized_keeps_metadata_and_runs(checkpoint, images, tmp_path):
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    done = _semseg("export", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / "ir"),
                   "--int8", str(images[0].parent), "--min-agreement", "0")  # fmt: skip
    out = tmp_path / "ir" / "m.xml"
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (int8, calibrated on 4 images)" in done.stdout
    assert out.is_file() and out.with_suffix(".bin").is_file()
    model = openvino_core().read_model(str(out))
    assert "FakeQuantize" in {op.get_type_name() for op in model.get_ops()}  # int8, not the fp32 graph
    assert json.loads(model.get_rt_info(["semseg", "quantized"]).astype(str)) == "int8"
    predictor = Predictor.from_checkpoint(out, backend="openvino")
    assert predictor.classes == ["a", "b", "c"]
    labels = predictor(images[0])
    fp32 = Predictor.from_checkpoint(checkpoint, backend="torch")(images[0])
    assert labels.shape == (48, 64) and (labels == fp32).mean() > 0.5
    refuse = ("from semseg.inference.quantize import export_int8_openvino as q; import sys; "  # above any agreement
              f"q({str(checkpoint)!r}, {str(tmp_path / 'bad.xml')!r}, {[str(i) for i in images]!r}, min_agreement=1.01)")
    refused = subprocess.run([sys.executable, "-c", refuse], capture_output=True, text=True)
    assert refused.returncode == 1 and "was not kept" in refused.stderr
    assert not (tmp_path / "bad.xml").exists() and not (tmp_path / "bad.bin").exists()


def test_cli_int8_export_and_its_errors(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(checkpoint), "--out", str(out), "--int8", str(images[0].parent),
                 "--min-agreement", "0"]) == 0  # fmt: skip
    assert "int8, calibrated on 4 images" in capsys.readouterr().out and out.is_file()
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.pt"), "--format", "torchscript",
                 "--int8", str(images[0])]) == 1  # fmt: skip
    assert "--int8 applies to --format onnx (ONNX Runtime) and --format openvino (NNCF) only" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--out", str(out), "--int8", str(tmp_path / "none" / "*.png")]) == 1
    assert "no calibration images" in capsys.readouterr().err


def _averaging_matrix(x):
    """A 6x6 matrix built from ``x``'s width (its shape, not its values), as PSPNet's pooling is."""
    from openvino import opset13 as ops

    width = ops.convert(ops.gather(ops.shape_of(x), ops.constant([3]), ops.constant(0)), np.float32)
    return ops.divide(ops.constant(np.ones((6, 6), np.float32)), width)


def test_shape_matmuls_are_products_with_a_matrix_built_from_shapes():
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops

    from semseg.inference.quantize import shape_matmuls

    x = ops.parameter([1, 4, 6, 6], np.float32, name="x")
    weights = ops.matmul(x, ops.constant(np.ones((6, 6), np.float32)), False, False, name="weights")
    pooling = ops.matmul(x, _averaging_matrix(x), False, False, name="pooling")
    values = ops.matmul(x, x, False, True, name="values")
    reshaped = ops.matmul(x, ops.reshape(x, ops.shape_of(x), False), False, True, name="reshaped")  # values too
    model = ov.Model([ops.add(ops.add(ops.add(weights, pooling), values), reshaped)], [x])
    assert shape_matmuls(model) == ["pooling"]


def test_openvino_int8_runs_pspnet_head_in_int8(tmp_path):
    # NNCF quantizing the pyramid's pooling products left the concatenation, and so the 3x3 head
    # convolution on it, in fp32 in OpenVINO's CPU plugin (56% of PSPNet's int8 time).
    pytest.importorskip("nncf")
    pytest.importorskip("openvino")
    core = openvino_core()
    if "INT8" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no int8 kernels in OpenVINO")
    from semseg.inference.export import export
    from semseg.inference.quantize import quantize_openvino, shape_matmuls

    torch.manual_seed(0)
    model = semseg.create_model("pspnet", num_classes=3, backbone="resnet18", aux=False).eval()
    checkpoint = save_weights(model, tmp_path / "psp.safetensors", classes=["a", "b", "c"],
                              palette=[[0, 0, 0], [9, 9, 9], [99, 99, 99]], mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    export(checkpoint, tmp_path / "psp.xml", fmt="openvino", check_sizes=((64, 64),))
    fp32 = core.read_model(str(tmp_path / "psp.xml"))
    assert len(shape_matmuls(fp32)) == 8  # rows and columns of each of the 4 bins
    batches = [np.random.default_rng(i).standard_normal((1, 3, 64, 80)).astype(np.float32) for i in range(2)]
    compiled = core.compile_model(quantize_openvino(fp32, batches), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    head = [op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
            if op.get_friendly_name().endswith("classifier.1.0/Conv/WithoutBiases")]  # fmt: skip
    assert head == ["u8"]


def test_quantize_openvino_skips_the_shape_product_even_when_names_repeat():
    # NNCF's ignored scope goes by name; a repeated name must not make it skip another product.
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops

    from semseg.inference.quantize import quantize_openvino

    x = ops.parameter([1, 4, 6, 6], np.float32, name="x")
    pooling = ops.matmul(x, _averaging_matrix(x), False, False, name="same")
    weights = ops.matmul(pooling, ops.constant(np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32)),
                         False, False, name="same")  # fmt: skip
    batches = [np.random.default_rng(i).standard_normal((1, 4, 6, 6)).astype(np.float32) for i in range(2)]
    quantized = quantize_openvino(ov.Model([weights], [x]), batches)
    fed = {}  # each MatMul's inputs, in graph order: FakeQuantize or not
    for op in quantized.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            fed[op.get_friendly_name()] = [i.get_source_output().get_node().get_type_name() for i in op.inputs()]
    assert len(fed) == 2
    pooling_product, weights_product = fed.values()
    assert "FakeQuantize" in weights_product and "FakeQuantize" not in pooling_product
