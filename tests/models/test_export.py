"""Every registered model goes through ``semseg export`` (:func:`semseg.inference.export.export`)
from a saved checkpoint: ONNX and TorchScript with dynamic batch, height and width, the
classes, palette and normalisation inside the file, and the same logits as PyTorch at sizes
the export never saw (odd, not divisible by the pyramid bins or the output stride)."""

from __future__ import annotations

import json

import pytest
import torch

import semseg
from semseg.engine.checkpoint import read_metadata, save_weights
from semseg.inference import export as export_module
from semseg.inference.export import export

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

META = {"classes": ["background", "road", "car"], "palette": [[0, 0, 0], [128, 64, 128], [0, 0, 142]],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # fmt: skip
# Sizes the export (traced at 64x64) never saw; the first runs at batch 1, the rest at batch 2.
NEW_SIZES = ((33, 47), (97, 131))
TOLERANCE = 1e-3  # largest absolute logit difference `semseg export` accepts (its default)


@pytest.fixture(scope="module", params=semseg.list_models())
def saved(request, tiny, tmp_path_factory):
    """``(checkpoint, model)`` for each registered model, shared by its ONNX and TorchScript tests."""
    name = request.param
    torch.manual_seed(0)
    model = semseg.create_model(name, num_classes=len(META["classes"]), **tiny(name)).eval()
    return save_weights(model, tmp_path_factory.mktemp(name) / f"{name}.safetensors", **META), model


def test_onnx_export_embeds_metadata_and_matches_pytorch(saved, tmp_path):
    checkpoint, _ = saved
    out = tmp_path / "model.onnx"
    max_abs_diff = export(checkpoint, out, fmt="onnx", check_sizes=NEW_SIZES, tolerance=TOLERANCE)
    assert 0 <= max_abs_diff <= TOLERANCE
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props == {**{f"semseg.{k}": v for k, v in META.items()},
                     "semseg.model_config": read_metadata(checkpoint)["model_config"]}  # fmt: skip
    for value in (*proto.graph.input, *proto.graph.output):
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        assert [dims[0], *dims[2:]] == ["batch", "height", "width"], value.name


def test_torchscript_export_embeds_metadata_and_matches_pytorch(saved, tmp_path):
    checkpoint, model = saved
    out = tmp_path / "model.pt"
    max_abs_diff = export(checkpoint, out, fmt="torchscript", check_sizes=NEW_SIZES[:1], tolerance=TOLERANCE)
    assert 0 <= max_abs_diff <= TOLERANCE
    extra = {"semseg.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    embedded = {k: json.loads(v) for k, v in json.loads(extra["semseg.json"]).items()}
    assert embedded == {**META, "model_config": read_metadata(checkpoint)["model_config"]}
    x = torch.randn(2, 3, 41, 53, generator=torch.Generator().manual_seed(1))  # another new size, batch 2
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=TOLERANCE)


def test_export_fails_when_the_exported_model_disagrees(tmp_path, monkeypatch):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    checkpoint = save_weights(model, tmp_path / "unet.safetensors", **META)
    runner = export_module._onnx_runner
    monkeypatch.setattr(export_module, "_onnx_runner", lambda path: lambda x: runner(path)(x) + 0.01)
    (tmp_path / "unet.onnx").write_bytes(b"the export a deployment runs today")
    with pytest.raises(ValueError, match=r"exported onnx model differs from PyTorch by up to 1\.0\de-02 \(> 1e-03\); "
                                         r"nothing was written to .*unet\.onnx"):
        export(checkpoint, tmp_path / "unet.onnx", check_sizes=NEW_SIZES[:1], tolerance=TOLERANCE)
    assert (tmp_path / "unet.onnx").read_bytes() == b"the export a deployment runs today"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.safetensors"]  # no staging left


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_refuses_to_overwrite_the_checkpoint_it_reads(tmp_path, fmt):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    checkpoint = save_weights(model, tmp_path / "unet.safetensors", **META)
    before = checkpoint.read_bytes()
    target = checkpoint if fmt == "onnx" else checkpoint.with_suffix(".xml")  # an IR's .bin takes the stem too
    victim = checkpoint.with_suffix(".bin") if fmt == "openvino" else checkpoint
    if fmt == "openvino":
        victim.write_bytes(before)
    with pytest.raises(ValueError, match=f"--out {victim} is the checkpoint being exported"):
        export(victim, target, fmt=fmt, check_sizes=NEW_SIZES[:1])
    assert victim.read_bytes() == before


def test_export_into_a_path_under_a_file_is_one_line(tmp_path):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    checkpoint = save_weights(model, tmp_path / "unet.safetensors", **META)
    (tmp_path / "a.png").write_bytes(b"x")
    out = tmp_path / "a.png" / "x.onnx"
    with pytest.raises(ValueError) as refused:
        export(checkpoint, out, check_sizes=NEW_SIZES[:1])
    assert str(refused.value) == f"--out {out}: {tmp_path / 'a.png'} is a file; choose a folder"


def test_export_writes_through_a_link_and_refuses_a_folder_up_front(tmp_path):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    checkpoint = save_weights(model, tmp_path / "unet.safetensors", **META)
    (tmp_path / "v3.onnx").write_bytes(b"old")
    (tmp_path / "current.onnx").symlink_to("v3.onnx")
    export(checkpoint, tmp_path / "current.onnx", check_sizes=NEW_SIZES[:1])
    assert (tmp_path / "current.onnx").is_symlink() and onnx.load(str(tmp_path / "v3.onnx")).graph.node
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match=r"--out .*folder is a folder; name the file to write"):
        export(checkpoint, tmp_path / "folder", check_sizes=NEW_SIZES[:1])
