"""The models shipped inside the package: listed, loadable by name, and what index.json says they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semseg.cli import main
from semseg.config import load_config
from semseg.data import camvid
from semseg.engine.checkpoint import load_model, read_metadata
from semseg.inference.predictor import Predictor
from semseg.pretrained import PRETRAINED_DIR, list_pretrained

SHIPPED = list_pretrained()
REPO = Path(__file__).resolve().parents[1]
REAL_CAMVID = REPO / ".." / "shared" / "data" / "camvid"
SIZE_LIMIT = 10 * 10**6  # issue 11: 10 MB, small enough to ship inside a wheel


def test_the_package_ships_camvid_models_one_within_10_mb():
    shipped = {m.name: m for m in SHIPPED}
    assert {"camvid-ddrnet_23_slim", "camvid-lraspp"} <= shipped.keys()
    assert shipped["camvid-lraspp"].path.stat().st_size <= SIZE_LIMIT


@pytest.mark.parametrize("model", SHIPPED, ids=lambda m: m.name)
def test_a_shipped_model_is_what_its_index_entry_says(model):
    assert model.path.parent == PRETRAINED_DIR and model.path.is_file()
    meta = read_metadata(model.name)
    assert meta["model_config"]["name"] == model.architecture and meta["classes"] == list(model.classes)
    assert meta["model_config"].get("aux") is not True  # the training-only head is not shipped
    with open(model.path, "rb") as f:  # safetensors: 8-byte header length, then the JSON header
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F16", "I64"}, dtypes  # fp16 weights (integer BatchNorm counters aside)
    assert 0.0 < model.val_mIoU < 1.0
    recipes = [step.removeprefix("semseg train ") for step in model.command.split(" && ")]
    assert all(r.startswith("configs/") and (REPO / r).is_file() for r in recipes), model.command
    assert meta["recipe"] == recipes[-1]
    outs = []
    for recipe in recipes:  # a teacher trained by the command itself is trained by an earlier step
        config = load_config(REPO / recipe)
        teacher = config.distill.teacher
        if teacher is not None and "/" in teacher:
            assert str(Path(teacher).parent) in outs, f"{recipe}'s teacher {teacher} is made by no earlier step"
        outs.append(config.out)
    assert (REPO / model.card).is_file()


@pytest.mark.parametrize("model", SHIPPED, ids=lambda m: m.name)
def test_a_shipped_model_runs_by_name(model, tmp_path, capsys):
    assert main(["pretrained"]) == 0
    listing = capsys.readouterr().out
    assert f"{model.name}: {model.architecture} on {model.dataset}" in listing
    assert f", {model.path.stat().st_size / 10**6:.1f} MB\n" in listing  # MB as the 10 MB limit counts, not MiB
    net, _ = load_model(model.name)
    assert {p.dtype for p in net.parameters()} == {torch.float32}  # fp16 on disk, cast to float32 to run
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    labels = Predictor.from_pretrained(model.name, backend="torch")(image)
    assert labels.shape == (90, 120) and labels.max() < len(model.classes)
    Image.fromarray(image).save(tmp_path / "street.png")
    assert main(["predict", model.name, str(tmp_path / "street.png"), "--out", str(tmp_path / "out"),
                 "--backend", "torch", "--quiet"]) == 0  # fmt: skip
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "masks" / "street.png")), labels)


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason="needs ../shared/data/camvid (the project's data folder)")
@pytest.mark.parametrize("name", ["camvid-ddrnet_23_slim", "camvid-lraspp"])
def test_the_camvid_model_segments_a_real_street(name):
    """On a CamVid val frame the shipped model must be a trained model, not random weights."""
    from semseg.engine.datasets import open_dataset

    data = open_dataset("camvid", "val", root=str(REAL_CAMVID))
    image, truth = data.raw(0)
    predictor = Predictor.from_pretrained(name, backend="torch")
    assert predictor.input_scale == 2.0  # trained and validated on CamVid at twice its size (model card)
    labels = predictor(image)
    valid = truth != 255
    assert (labels[valid] == truth[valid]).mean() > 0.85  # 0.943 and 0.948 shipped; random weights: ~0.1
    assert labels.max() < len(camvid.CLASSES)


def test_shipping_drops_the_aux_head_and_keeps_the_predictions(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship_pretrained", REPO / "scripts" / "ship_pretrained.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    from semseg.engine.checkpoint import save_weights
    from semseg.registry import create_model

    torch.manual_seed(0)
    trained = create_model("ddrnet_23_slim", num_classes=3, aux=True).eval()
    save_weights(trained, tmp_path / "run.safetensors", classes=["a", "b", "c"], palette=[[0, 0, 0]] * 3,
                 mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    lean, meta = ship.shipped_model(tmp_path / "run.safetensors")
    assert lean.model_config["aux"] is False and meta["classes"] == ["a", "b", "c"]
    dropped = set(trained.state_dict()) - set(lean.state_dict())
    assert dropped and all(k.startswith("seghead_extra.") for k in dropped)
    assert {t.dtype for t in lean.state_dict().values() if t.is_floating_point()} == {torch.float16}
    source = trained.state_dict()
    for key, value in lean.state_dict().items():  # every kept tensor is the trained one, rounded to fp16
        expected = source[key].half() if source[key].is_floating_point() else source[key]
        assert torch.equal(value, expected), key
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():  # eval never runs the aux head: the labels are the trained model's up to fp16
        agree = (lean.float().eval()(x).argmax(1) == trained(x).argmax(1)).float().mean()
    assert agree > 0.97, agree
