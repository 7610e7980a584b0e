import json

import numpy as np
import pytest
import torch
from PIL import Image

from semseg.data.synthetic import CLASSES, SyntheticShapes
from semseg.demo import DemoConfig, run_demo
from semseg.engine.checkpoint import load_model
from semseg.engine.evaluate import evaluate


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    config = DemoConfig(epochs=2, train_size=48, val_size=16, predict_size=3, batch_size=16, base_channels=4)
    return out, run_demo(out, config, progress=False)


def test_writes_every_output(demo_run):
    out, _ = demo_run
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png", "masks", "metrics.json", "model.safetensors", "side_by_side", "train",
    ]
    # The run folder is what `semseg train` writes; the shipped model is its last epoch.
    assert {"last.safetensors", "log.jsonl", "curves.png"} <= {p.name for p in (out / "train").iterdir()}
    assert (out / "model.safetensors").read_bytes() == (out / "train" / "last.safetensors").read_bytes()
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000.png", "001.png", "002.png"]
    assert len(list((out / "side_by_side").iterdir())) == 3


def test_metrics_json(demo_run):
    out, result = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    # The recorded figures are those of the saved model on the same val images, recomputed here.
    model, _ = load_model(out / "model.safetensors")
    val = SyntheticShapes.split("val", 16, seed=0)
    images, masks = zip(*(val[i] for i in range(len(val))))
    recomputed = evaluate(model.eval(), [(torch.stack(images), torch.stack(masks))], num_classes=len(CLASSES),
                          class_names=CLASSES, progress=False)  # fmt: skip
    assert metrics["mIoU"] == pytest.approx(recomputed["mIoU"], abs=1e-6)
    assert metrics["pixel_accuracy"] == pytest.approx(recomputed["pixel_accuracy"], abs=1e-6)
    assert list(metrics["per_class_IoU"]) == list(CLASSES)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["mIoU"] == result["mIoU"]


def test_masks_are_palette_pngs_of_class_ids(demo_run):
    out, _ = demo_run
    with Image.open(out / "masks" / "000.png") as mask:
        assert mask.mode == "P" and mask.size == (48, 48)
        assert set(np.unique(np.array(mask))) <= set(range(len(CLASSES)))
    with Image.open(out / "side_by_side" / "000.png") as panel:
        assert panel.mode == "RGB" and panel.size == ((48 * 3 + 8) * 4, 48 * 4)


def test_saved_model_reloads_with_its_classes(demo_run):
    out, _ = demo_run
    model, meta = load_model(out / "model.safetensors")
    assert meta["classes"] == list(CLASSES)
    assert model.model_config["base_channels"] == 4


def test_same_seed_same_result(tmp_path):
    config = DemoConfig(epochs=2, train_size=48, val_size=16, predict_size=1, batch_size=16, base_channels=4)
    first = run_demo(tmp_path / "a", config, progress=False)
    again = run_demo(tmp_path / "b", config, progress=False)
    assert again["history"] == first["history"]
    assert (tmp_path / "a" / "masks" / "000.png").read_bytes() == (tmp_path / "b" / "masks" / "000.png").read_bytes()


def test_training_learns_on_a_short_run(tmp_path):
    # 2,000 images seen (augmented with turns and flips): far from the demo's 0.87, but clearly
    # past the trivial "everything is background" answer, whose mIoU is background's pixel share / 5.
    config = DemoConfig(epochs=4, train_size=512, val_size=32, predict_size=1, batch_size=32, base_channels=8)
    result = run_demo(tmp_path, config, progress=False)
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < 0.6 * losses[0], losses
    val = SyntheticShapes.split("val", 32, seed=config.seed)
    background = np.mean([(val.raw(i)[1] == 0).mean() for i in range(len(val))])
    assert result["mIoU"] > background / len(CLASSES) + 0.05, (result["mIoU"], background)


def test_fewer_samples_than_a_batch_still_train(tmp_path):
    config = DemoConfig(epochs=1, train_size=5, val_size=2, predict_size=1, batch_size=16, base_channels=4)
    result = run_demo(tmp_path, config, progress=False)
    assert [h["epoch"] for h in result["history"]] == [1] and (tmp_path / "model.safetensors").is_file()
