"""Fine-tuning from checkpoints users have, and shipped models addressed by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import semseg
import semseg.pretrained as pretrained
from semseg.cli import main
from semseg.config import ConfigError, load_config
from semseg.engine.checkpoint import save_weights
from semseg.engine.init_from import init_from
from semseg.engine.trainer import fit
from semseg.inference.predictor import Predictor

UNET = {"base_channels": 4, "depth": 2}


def checkpoint(path, num_classes=5, seed=0):
    torch.manual_seed(seed)
    model = semseg.create_model("unet", num_classes=num_classes, **UNET).eval()
    return save_weights(model, path, classes=[f"c{i}" for i in range(num_classes)],
                        palette=[[i * 40, 0, 0] for i in range(num_classes)], mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip


@pytest.fixture
def three_class_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (tmp_path / "data" / split / sub).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "data" / split / "images" / f"{i}.png")
            Image.fromarray(rng.integers(0, 3, (32, 32), dtype=np.uint8)).save(tmp_path / "data" / split / "masks" / f"{i}.png")
    yaml = tmp_path / "data" / "three.yaml"
    yaml.write_text("name: three\nclasses: [x, y, z]\nmask_format: index\n"
                    "splits:\n  train: {images: train/images, masks: train/masks}\n  val: {images: val/images, masks: val/masks}\n")
    return yaml


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A shipped-model folder holding one tiny model, as the package's pretrained/ does."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    checkpoint(folder / "camvid-tiny.safetensors")
    entry = {"name": "camvid-tiny", "file": "camvid-tiny.safetensors", "architecture": "unet", "dataset": "camvid",
             "classes": [f"c{i}" for i in range(5)], "val_mIoU": 0.5, "command": "semseg train x.yaml",
             "card": "docs/model_card_camvid.md"}  # fmt: skip
    (folder / "index.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", folder)
    return "camvid-tiny"


def test_fine_tuning_lists_exactly_the_reinitialised_classifier(three_class_folder, tmp_path, capsys):
    source = checkpoint(tmp_path / "five.safetensors")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: unet, options: {{base_channels: 4, depth: 2}}, init_from: {source}}}\n"
                      f"data: {{dataset: {three_class_folder}, batch_size: 2, workers: 0}}\nepochs: 1\n"
                      f"out: {tmp_path / 'run'}\n")  # fmt: skip
    fit(load_config(recipe), progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("init_from")]
    assert lines == [f"init_from {source}: loaded {len(semseg.create_model('unet', num_classes=3, **UNET).state_dict()) - 2} "
                     "tensors; re-initialised (shape differs): classifier.weight, classifier.bias"]  # fmt: skip


def test_every_other_tensor_is_the_source_s(tmp_path):
    source = checkpoint(tmp_path / "five.safetensors")
    src = semseg.engine.checkpoint.load_model(source)[0].state_dict()
    torch.manual_seed(7)
    model = semseg.create_model("unet", num_classes=3, **UNET)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert init_from(model, str(source)).reinitialised == ["classifier.weight", "classifier.bias"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh[key] if key.startswith("classifier.") else src[key]), key


def test_another_architecture_is_refused_naming_the_keys(tmp_path):
    source = checkpoint(tmp_path / "five.safetensors")
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=3)
    with pytest.raises(ConfigError, match=r"does not fit model unet: missing encoder\.downs\.2\..*Choose the same"):
        init_from(model, str(source))


def test_a_torchvision_checkpoint_initialises_all_but_the_classifiers(tmp_path):
    torch.manual_seed(0)
    coco = semseg.create_model("lraspp", num_classes=21).state_dict()  # torchvision's key names and shapes
    backbone = {k: v for k, v in coco.items() if k.startswith("backbone.")}
    torchvision_keys = {k.replace("backbone.features.", "backbone."): v for k, v in backbone.items()}
    torch.save({**torchvision_keys, **{k: v for k, v in coco.items() if not k.startswith("backbone.")}},
               tmp_path / "lraspp_coco.pth")  # fmt: skip
    model = semseg.create_model("lraspp", num_classes=11)
    reinit = init_from(model, str(tmp_path / "lraspp_coco.pth"))
    assert reinit.reinitialised == ["classifier.low_classifier.weight", "classifier.low_classifier.bias",
                      "classifier.high_classifier.weight", "classifier.high_classifier.bias"]  # fmt: skip
    assert torch.equal(model.state_dict()["backbone.features.0.0.weight"], coco["backbone.features.0.0.weight"])


def test_shipped_models_are_usable_by_name_everywhere(shipped, tmp_path, capsys):
    assert main(["pretrained"]) == 0
    listing = capsys.readouterr().out
    assert "camvid-tiny: unet on camvid (5 classes" in listing and "val mIoU 0.5000" in listing
    assert "reproduce: semseg train x.yaml" in listing
    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    labels = Predictor.from_pretrained(shipped, backend="torch")(image)
    assert labels.shape == (40, 48)
    assert main(["predict", shipped, str(image), "--out", str(tmp_path / "pred"), "--backend", "torch"]) == 0
    assert np.array_equal(np.array(Image.open(tmp_path / "pred" / "masks" / "street.png")), labels)
    assert main(["export", shipped, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    model = semseg.create_model("unet", num_classes=2, **UNET)
    assert init_from(model, shipped).reinitialised == ["classifier.weight", "classifier.bias"]


def test_an_unknown_name_lists_the_shipped_ones(shipped, tmp_path, capsys):
    assert main(["predict", "camvid-nope", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "camvid-nope is neither a file nor a shipped model (shipped models: camvid-tiny" in capsys.readouterr().err


def test_a_source_without_the_aux_head_leaves_only_the_aux_head_fresh(tmp_path):
    torch.manual_seed(0)
    lean = semseg.create_model("ddrnet_23_slim", num_classes=11, aux=False)  # as shipped: no aux head
    source = save_weights(lean, tmp_path / "lean.safetensors")
    model = semseg.create_model("ddrnet_23_slim", num_classes=3, aux=True)
    report = init_from(model, str(source))
    assert report.reinitialised == ["final_layer.conv2.weight", "final_layer.conv2.bias"]
    aux = sorted(k for k in model.state_dict() if k.startswith("seghead_extra.") and "num_batches" not in k)
    assert report.fresh_aux == aux and len(aux) > 4
    assert report.loaded == len(lean.state_dict()) - 2
    assert "aux head not in the source, trained from scratch: seghead_extra." in report.describe("lean")
    for key, value in model.state_dict().items():
        if not key.startswith(("seghead_extra.", "final_layer.conv2.")):
            assert torch.equal(value, lean.state_dict()[key]), key


@pytest.mark.parametrize("damage", ["text", "truncated", "safetensors_renamed"])
def test_an_unreadable_pth_is_one_line_naming_the_file(tmp_path, damage):
    from safetensors.torch import save_file

    from semseg.backbones.weights import read_state_dict

    path = tmp_path / "weights.pth"
    if damage == "text":
        path.write_text("hello")
    elif damage == "truncated":
        torch.save({"a": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        save_file({"a": torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match=r"weights.pth is not a readable PyTorch weights file: damaged, cut short, or "
                                         r"not written by torch.save \(\w+\); a safetensors file must end in"):
        read_state_dict(path)


def test_a_pth_holding_python_objects_besides_tensors_says_so_and_how_to_save_weights(tmp_path):
    import argparse

    from semseg.backbones.weights import read_state_dict

    path = tmp_path / "lightning.pth"
    torch.save({"state_dict": {"a": torch.zeros(2)}, "hparams": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match=r"lightning\.pth holds Python objects besides tensors \(argparse\.Namespace\), "
                                         r"which semseg does not unpickle .*save just its weights"):
        read_state_dict(path)
