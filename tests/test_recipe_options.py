"""Recipe keys for small datasets (repeats, val_every, cache) and options checked against their builders."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from semseg.cli import main
from semseg.config import ConfigError, load_config
from semseg.engine.datasets import build_datasets
from semseg.engine.trainer import Repeated, build_loss, fit

RECIPE = """
model:
  name: unet
  options: {base_channels: 4, depth: 2}
data:
  dataset: shapes
  options: {train_size: 16, val_size: 4, size: 32}
  batch_size: 8
  workers: 0
epochs: 3
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_val_every_validates_every_n_epochs_and_after_the_last(recipe, tmp_path):
    out = tmp_path / "run"
    result = fit(load_config(recipe, [f"out={out}", "epochs=5", "val_every=2"]), progress=False)
    records = log(out)
    assert [r["val_mIoU"] is not None for r in records] == [False, True, False, True, True]
    assert [r["val"] == {} for r in records] == [True, False, True, False, False]
    assert result["mIoU"] == records[-1]["val_mIoU"]
    assert (out / "curves.png").is_file()


def test_repeats_makes_an_epoch_see_each_sample_n_times(recipe, tmp_path):
    out = tmp_path / "run"
    fit(load_config(recipe, [f"out={out}", "epochs=1", "repeats=3"]), progress=False)
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["scheduler"]["last_epoch"] == 16 * 3 // 8  # optimizer steps: 3x the dataset per epoch
    dataset = Repeated(list(range(5)), 3)
    assert len(dataset) == 15 and [dataset[i] for i in (0, 4, 5, 14)] == [0, 4, 0, 4]


def test_cache_decodes_once_and_gives_the_same_samples(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (tmp_path / split / sub).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / split / "images" / f"{i}.png")
            Image.fromarray(rng.integers(0, 2, (40, 40), dtype=np.uint8)).save(tmp_path / split / "masks" / f"{i}.png")
    overrides = ["data.dataset=folder", f"data.root={tmp_path}", "data.options={classes: 2}", "data.crop_size=[32, 32]"]
    plain = build_datasets(load_config(None, overrides)).train
    cached = build_datasets(load_config(None, [*overrides, "data.cache=true"])).train
    for i in range(3):
        (tmp_path / "train" / "images" / f"{i}.png").unlink()  # a cached dataset reads no file any more
    for i in range(3):
        plain.transform.reseed(5)
        cached.transform.reseed(5)
        with pytest.raises(Exception):
            plain[i]
        a_image, a_mask = cached[i]
        assert a_image.shape == (3, 32, 32) and a_mask.dtype == torch.int64
    raw_image, raw_mask = cached.raw(0)
    raw_image[:] = 0  # callers may write into what raw returns: the cache stays intact
    assert cached.raw(0)[0].any()


def test_cache_is_refused_above_its_memory_bound(tmp_path):
    from semseg.data import FolderDataset

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "images" / "0.png")
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "masks" / "0.png")
    with pytest.raises(ValueError, match="caching 1 decoded pairs would take .* set data.cache: false"):
        FolderDataset(tmp_path, classes=2).cache_decoded(max_bytes=1000)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('model.options={base_channels: 4, batch_norm: "false"}', "model.options: batch_norm must be bool, got 'false'"),
        ("model.options={base_channel: 4}", "model.options: unknown option.* base_channel for model 'unet'"),
        ("data.options={train_size: 16, bogus: 1}", "unknown data.options bogus"),
        ("loss.name=focal", None),
        ('data.options={train_size: 16, augment: "false"}', "data.options.augment for shapes must be bool, got 'false'"),
        ("loss.options={gama: 1}", "unknown option.* loss.options.gama for loss 'ce'"),
    ],
)
def test_options_are_checked_before_training(recipe, tmp_path, capsys, override, message):
    code = main(["train", str(recipe), f"--out={tmp_path / 'o'}", f"--{override}", "--epochs=1", "--quiet"])
    err = capsys.readouterr().err.strip()
    if message is None:
        assert code == 0
        return
    assert code == 1 and err.count("\n") == 0, err
    assert re.search(message, err), err


def test_shapes_cache_and_augment(recipe):
    plain = build_datasets(load_config(recipe))
    config = load_config(recipe, ["data.cache=true", "data.options={train_size: 16, val_size: 4, size: 32, augment: true}"])
    data = build_datasets(config)
    assert data.train._generated is not None and data.val._generated is not None
    # The cache holds the generator's samples; val is never augmented.
    torch.testing.assert_close(data.val[1], plain.val[1], rtol=0, atol=0)
    x, y = data.train[3]
    image, mask = plain.train.raw(3)
    # Each augmented sample is one of the 8 turns/flips of the generated one, and only that.
    views = [(np.rot90(m, k), np.rot90(m, k)[:, ::-1]) for m in [mask] for k in range(4)]
    assert any(np.array_equal(y.numpy(), v) for pair in views for v in pair)
    assert x.shape == (3, 32, 32) and y.dtype == torch.long
    data.train.transform.reseed(7)
    first = [data.train[i][1] for i in range(16)]
    data.train.transform.reseed(7)
    assert all(torch.equal(a, data.train[i][1]) for i, a in enumerate(first))
    assert not all(torch.equal(a, plain.train[i][1]) for i, a in enumerate(first))


def test_dataset_options_are_checked_against_the_dataset(tmp_path):
    (tmp_path / "train").mkdir()
    config = load_config(None, ["data.dataset=camvid", f"data.root={tmp_path}", "data.options={bogus: 1}"])
    with pytest.raises(ConfigError, match="unknown option.* options.bogus for dataset 'camvid'; valid options: drives, exclude_drives"):
        build_datasets(config)


def test_loss_options_reach_the_loss_and_label_smoothing_is_ce_only():
    ohem = build_loss(load_config(None, ["loss.name=ohem", "loss.options={threshold: 0.5, min_kept: 1000}"]), 3)
    assert (ohem.threshold, ohem.min_kept) == (0.5, 1000)
    focal = build_loss(load_config(None, ["loss.name=focal", "loss.options={gamma: 1}"]), 3)
    assert focal.gamma == 1.0
    with pytest.raises(ConfigError, match="loss.label_smoothing applies to cross-entropy only"):
        build_loss(load_config(None, ["loss.name=focal", "loss.label_smoothing=0.1"]), 3)
    with pytest.raises(ConfigError, match="loss.options.min_kept must be int, got 1.5"):
        build_loss(load_config(None, ["loss.name=ohem", "loss.options={min_kept: 1.5}"]), 3)


def test_a_held_out_camvid_drive_validates_on_frames_training_never_sees(tmp_path):
    from semseg.data import CamVid

    for sub in ("train", "trainannot"):
        (tmp_path / sub).mkdir()
    for name in ("0001TP_000.png", "0006R0_000.png", "0006R0_001.png", "0016E5_000.png"):
        Image.fromarray(np.zeros((36, 48, 3), dtype=np.uint8)).save(tmp_path / "train" / name)
        Image.fromarray(np.zeros((36, 48), dtype=np.uint8)).save(tmp_path / "trainannot" / name)
    overrides = ["data.dataset=camvid", f"data.root={tmp_path}", "data.val_split=train",
                 "data.options={exclude_drives: [0006R0]}", "data.val_options={drives: [0006R0]}"]  # fmt: skip
    data = build_datasets(load_config(None, overrides))
    assert [p[0].name for p in data.train.pairs] == ["0001TP_000.png", "0016E5_000.png"]
    assert [p[0].name for p in data.val.pairs] == ["0006R0_000.png", "0006R0_001.png"]
    with pytest.raises(ValueError, match="no CamVid train frames left for drives=\\['Seq05VD'\\]"):
        CamVid(tmp_path, "train", drives=["Seq05VD"])
