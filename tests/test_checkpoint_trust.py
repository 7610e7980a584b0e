"""Checkpoints are untrusted input: metadata and tensors are checked before a model is built or run."""

from __future__ import annotations

import json
import pickle
import resource

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import semseg
from semseg.cli import main
from semseg.engine.checkpoint import CheckpointError, load_model, load_training_state, save_weights

CLASSES = ["a", "b", "c"]


@pytest.fixture
def good(tmp_path):
    torch.manual_seed(0)
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    return save_weights(model, tmp_path / "good.safetensors", classes=CLASSES, palette=[[0, 0, 0], [1, 1, 1], [2, 2, 2]],
                        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], ignore_index=255)  # fmt: skip


def rewrite(src, dst, *, tensors=None, **meta_changes):
    """A copy of ``src`` with some tensors and metadata keys replaced (as a forger would)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    for key, value in meta_changes.items():
        meta[key] = json.dumps(value)
    save_file({**load_file(str(src)), **(tensors or {})}, str(dst), metadata=meta)
    return dst


def test_the_good_file_loads(good):
    model, meta = load_model(good)
    assert meta["classes"] == CLASSES and model.model_config["base_channels"] == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": ["a", "b"]}, "metadata classes has 2 names for a model with 3 outputs"),
        ({"classes": ["a", 2, "c"]}, "metadata classes must be a list of names"),
        ({"palette": [[0, 0, 0], [1, 1, 1]]}, "metadata palette has 2 colours for 3 classes"),
        ({"palette": [[0, 0, 300]] * 3}, r"metadata palette must be a list of \[R, G, B\] triples"),
        ({"mean": [0.5, 0.5]}, "metadata mean has 2 values for 3 input channels"),
        ({"std": [0.25, 0.0, 0.25]}, r"metadata std must be > 0 for every channel"),
        ({"std": ["x", 1, 1]}, "metadata std must be a list of finite numbers"),
        ({"ignore_index": "255"}, "metadata ignore_index must be an int"),
        ({"infer_scale": 100}, r"metadata infer_scale must be a number in \(0, 4.0\], got 100"),
        ({"infer_scale": "2"}, r"metadata infer_scale must be a number in \(0, 4.0\], got '2'"),
    ],
)
def test_bad_metadata_is_named(good, tmp_path, change, message):
    bad = rewrite(good, tmp_path / "bad.safetensors", **change)
    with pytest.raises(CheckpointError, match=message):
        load_model(bad)


def test_int32_weights_are_refused(good, tmp_path):
    key = "classifier.weight" if "classifier.weight" in load_file(str(good)) else next(iter(load_file(str(good))))
    tensors = {key: load_file(str(good))[key].to(torch.int32)}
    with pytest.raises(CheckpointError, match=f"tensor {key} is I32, expected one of BF16, F16, F32"):
        load_model(rewrite(good, tmp_path / "int.safetensors", tensors=tensors))


def test_nan_weights_are_refused(good, tmp_path):
    key = next(k for k, v in load_file(str(good)).items() if v.is_floating_point())
    tensor = load_file(str(good))[key].clone()
    tensor.view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match=f"tensor {key} holds NaN or infinite values"):
        load_model(rewrite(good, tmp_path / "nan.safetensors", tensors={key: tensor}))


def test_fp16_weights_load_as_float32(good, tmp_path):
    half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(good)).items()}
    model, _ = load_model(rewrite(good, tmp_path / "half.safetensors", tensors=half))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_forged_model_config_allocates_nothing_before_it_is_refused(good, tmp_path):
    with safe_open(str(good), framework="pt") as f:
        config = json.loads(f.metadata()["model_config"])
    config["base_channels"] = 4096  # ~31 GB of float32 weights if it were built
    bad = rewrite(good, tmp_path / "huge.safetensors", model_config=config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="has shape .* its model_config says"):
        load_model(bad)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_a_config_semseg_cannot_build_is_named(good, tmp_path):
    with safe_open(str(good), framework="pt") as f:
        config = json.loads(f.metadata()["model_config"])
    bad = rewrite(good, tmp_path / "typo.safetensors", model_config={**config, "depth": "two"})
    with pytest.raises(CheckpointError, match="does not describe a model semseg can build .*depth must be int"):
        load_model(bad)


def test_cli_gives_one_line_for_a_bad_checkpoint(good, tmp_path, capsys):
    bad = rewrite(good, tmp_path / "bad.safetensors", classes=["a"])
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    assert main(["predict", str(bad), str(image), "--out", str(tmp_path / "out"), "--backend", "torch"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metadata classes has 1 names" in err


def test_truncated_training_state_gets_one_line(tmp_path):
    path = tmp_path / "last.state.pt"
    torch.save({"epoch": 3, "history": [], "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="is not a readable training state .* may be truncated"):
        load_training_state(path)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_state_file_with_pickled_code_is_refused_without_suggesting_weights_only_false(tmp_path, capsys):
    path = tmp_path / "last.state.pt"
    with open(path, "wb") as f:
        torch.save({"epoch": 1, "x": Evil()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError) as info:
        load_training_state(path)
    assert "semseg does not unpickle such files" in str(info.value)
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_checkpoint_does_not_depend_on_the_backbone_weights_file(tmp_path):
    # The ImageNet file is read once, when the model is first built; the checkpoint is self-contained.
    trunk = semseg.create_model("unet", num_classes=2, backbone="resnet18").backbone.state_dict()
    imagenet = tmp_path / "resnet18.pth"
    torch.save(trunk, imagenet)
    model = semseg.create_model("unet", num_classes=2, backbone="resnet18", backbone_weights=str(imagenet))
    assert model.model_config["backbone_weights"] is None
    path = save_weights(model.eval(), tmp_path / "m.safetensors", classes=["x", "y"], palette=[[0, 0, 0], [9, 9, 9]],
                        mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])  # fmt: skip
    imagenet.unlink()
    clone, _ = load_model(path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), model(x))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 20, 200)).save(image)
    assert main(["predict", str(path), str(image), "--out", str(tmp_path / "pred"), "--backend", "torch"]) == 0
    assert main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0


def test_a_checkpoint_without_what_prediction_needs_is_named(tmp_path, capsys):
    model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=1)
    path = save_weights(model, tmp_path / "bare.safetensors", classes=["a", "b"])
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    for backend in ("torch", "auto"):  # auto: OpenVINO where installed, which converts the file first
        assert main(["predict", str(path), str(image), "--out", str(tmp_path / "o"), "--backend", backend]) == 1
        err = capsys.readouterr().err.strip()
        assert f"{path} lacks what prediction needs in its metadata (palette, mean, std)" in err
        assert err.count("\n") == 0


def test_a_folder_or_a_torchscript_file_given_as_checkpoint_says_what_it_is(tmp_path):
    from semseg.engine.checkpoint import read_metadata

    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is a folder, not a checkpoint: pass a .safetensors file"):
        read_metadata(tmp_path)
    pickled = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2)}, pickled)
    with pytest.raises(ValueError, match=r"model\.pt is not a safetensors checkpoint but, by its name, a PyTorch "
                                         r"pickle or TorchScript file: .*torch\.jit\.load"):
        read_metadata(pickled)
