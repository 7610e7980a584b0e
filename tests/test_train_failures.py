"""How `semseg train` fails and reports: bad numbers refused up front, NaN never saved, one-line
errors, and an honest last line when a run stops or has nothing to do (an outside trial's findings)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from semseg.cli import main
from semseg.config import ConfigError, load_config

RECIPE = """
model:
  name: unet
  options: {base_channels: 4, depth: 2}
data:
  dataset: shapes
  options: {train_size: 16, val_size: 4, size: 32}
  batch_size: 8
  workers: 0
optim:
  name: sgd
  lr: 0.05
epochs: 3
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


@pytest.mark.parametrize(("override", "said"), [
    ("optim.lr=inf", "optim.lr must be a finite number, got 'inf'"),
    ("optim.weight_decay=.nan", "optim.weight_decay must be a finite number, got nan"),
    ("clip_grad_norm=.nan", "clip_grad_norm must be a finite number, got nan"),
    ("optim.power=.inf", "optim.power must be a finite number, got inf"),
    ("loss.class_weights=[1, .nan, 1]", "loss.class_weights[1] must be a finite number, got nan"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0, got -1.0"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1), got 1.5"),
    ("loss.class_weights=[0, 0, 0]", "loss.class_weights must be >= 0 with at least one > 0"),
    ("loss.class_weights=[1, -1, 1]", "loss.class_weights must be >= 0 with at least one > 0"),
    ("clip_grad_norm=0", "clip_grad_norm must be > 0 (null: no clipping), got 0.0"),
    ("loss.label_smoothing=1", "loss.label_smoothing must be in [0, 1), got 1.0"),
    ("optim.warmup_steps=-5", "optim.warmup_steps must be >= 0, got -5"),
])
def test_numbers_that_would_train_nan_or_nothing_are_refused_before_anything_runs(recipe, override, said):
    with pytest.raises(ConfigError) as caught:
        load_config(recipe, [override])
    assert said in str(caught.value)


def test_a_model_option_cannot_be_nan_either():
    import semseg

    with pytest.raises(ValueError, match="must be a finite number, got nan"):
        semseg.create_model("segformer", num_classes=3, drop_path_rate=float("nan"))


def test_weights_gone_nan_are_never_saved_and_the_error_is_one_line(recipe, tmp_path, capsys):
    # SGD at lr 1e30: the first step's weights overflow, and every later loss is NaN.
    out = tmp_path / "run"
    code = main(["train", str(recipe), f"--out={out}", "--optim.lr=1e30", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("semseg train: error: ") and len(err.strip().splitlines()) == 1, err
    assert "after epoch 1 the weights hold NaN or infinite values" in err and "lower optim.lr" in err
    assert not (out / "best.safetensors").exists() and not (out / "last.safetensors").exists()


def test_an_epoch_whose_every_batch_was_skipped_stops_the_run():
    # Two batches, far fewer than max_nonfinite: the in-a-row guard alone never fires.
    import semseg
    from semseg.engine.train import train_one_epoch

    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    batches = [(torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))) for _ in range(2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nan_loss = lambda logits, target: logits.sum() * float("nan")  # noqa: E731
    with pytest.raises(FloatingPointError, match=r"the loss was not finite for every batch of the epoch \(2; last: nan\)"):
        train_one_epoch(model, batches, optimizer, nan_loss, progress=False, max_nonfinite=10)


def test_a_run_stopped_before_validating_ends_with_where_it_stands(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(recipe), f"--out={out}", "--val_every=2", "--stop-after=1", "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"stopped after epoch 1 of 3 (not validated yet); --resume continues it; checkpoints in {out}/"
    assert main(["train", str(recipe), f"--out={out}", "--val_every=2", "--resume", "--stop-after=1", "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]  # epoch 2 is validated, and the run is still not done
    assert last.startswith("stopped after epoch 2 of 3 (val mIoU ") and last.endswith("; --resume continues it; "
                                                                                   f"checkpoints in {out}/")  # fmt: skip
    assert main(["train", str(recipe), f"--out={out}", "--val_every=2", "--resume", "--quiet"]) == 0
    best = max(json.loads(line)["val_mIoU"] or 0 for line in (out / "log.jsonl").read_text().splitlines())
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["val_mIoU"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == (f"val mIoU {last:.4f}, best val mIoU {best:.4f}; "
                                                                f"checkpoints in {out}/")  # fmt: skip
    assert main(["train", str(recipe), f"--out={out}", "--val_every=2", "--resume", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == (f"{out}/ already holds 3 epochs of the recipe's 3 (best val mIoU "
                                               f"{best:.4f}); nothing to train: raise --epochs to go on")  # fmt: skip


def test_an_out_folder_that_is_a_file_is_refused_before_training(recipe, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert main(["train", str(recipe), f"--out={out}", "--quiet"]) == 1
        captured = capsys.readouterr()
        assert "epoch 1" not in captured.out  # refused before a minute of training is spent
        assert captured.err.strip() == f"semseg train: error: out: {out}: {blocker} is a file; choose a folder"


def test_a_val_split_without_labelled_pixels_is_said_and_the_epoch_kept(recipe, tmp_path, capsys):
    for split, count in (("train", 4), ("val", 2)):
        for folder in ("images", "masks"):
            (tmp_path / split / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / split / "images" / f"{i}.png")
            mask = np.full((32, 32), 255 if split == "val" else i % 2, np.uint8)
            Image.fromarray(mask).save(tmp_path / split / "masks" / f"{i}.png")
    description = tmp_path / "data.yaml"
    description.write_text("classes: [a, b]\nsplits:\n  train: {images: train/images, masks: train/masks}\n"
                           "  val: {images: val/images, masks: val/masks}\n")  # fmt: skip
    out = tmp_path / "run"
    code = main(["train", str(recipe), f"--out={out}", f"--data.dataset={description}", "--data.options={}",
                 "--data.batch_size=2", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == (f"semseg train: error: the 'val' split has no labelled pixel to score (every mask pixel is "
                           f"ignore_index 255); epoch 1 is saved in {out}/ but no best.safetensors can be chosen: fix "
                           "the val masks (semseg data check) or set data.val_split to another split")  # fmt: skip
    assert (out / "last.safetensors").is_file()


@pytest.mark.parametrize(("device", "said"), [
    ("gpu", "device: expected a device such as cpu, cuda or cuda:1, got 'gpu'"),
    ("meta", "device: meta: not a device semseg can run on"),
])
def test_a_device_this_machine_lacks_is_one_line(recipe, tmp_path, capsys, device, said):
    assert main(["train", str(recipe), f"--out={tmp_path / 'run'}", f"--device={device}", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"semseg train: error: {said}") and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_it_is_one_line(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), f"--out={tmp_path / 'run'}", "--device=cuda", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("semseg train: error: device: cuda: this machine has no CUDA device") and "\n" not in err


def test_resume_refuses_a_changed_recipe_and_names_every_change(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(recipe), f"--out={out}", "--stop-after=1", "--quiet"]) == 0
    capsys.readouterr()
    code = main(["train", str(recipe), f"--out={out}", "--resume", "--optim.lr=0.5",
                 "--model.options={base_channels: 8, depth: 2}", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"semseg train: error: --resume continues {out} as it was started; these settings differ "
                          "from its recipe: model.options ({'base_channels': 4, 'depth': 2} -> {'base_channels': 8, "
                          "'depth': 2}); optim.lr (0.05 -> 0.5). ")  # fmt: skip
    assert main(["train", str(recipe), f"--out={out}", "--resume", "--optim.name=adamw", "--quiet"]) == 1
    assert "optim.name ('sgd' -> 'adamw')" in capsys.readouterr().err
    # More epochs, another worker count and validation cadence: the same run, continued.
    assert main(["train", str(recipe), f"--out={out}", "--resume", "--epochs=4", "--val_every=2",
                 "--data.workers=0", "--quiet"]) == 0  # fmt: skip
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def mixed_size_dataset(root):
    """A folder dataset whose images (and masks) come in two sizes."""
    for split in ("train", "val"):
        for folder in ("images", "masks"):
            (root / split / folder).mkdir(parents=True)
        for i, (h, w) in enumerate([(48, 48), (40, 64), (48, 48), (40, 64)]):
            Image.fromarray(np.full((h, w, 3), 30 * i, np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(np.full((h, w), i % 2, np.uint8)).save(root / split / "masks" / f"{i}.png")
    description = root / "data.yaml"
    description.write_text("classes: [a, b]\nsplits:\n  train: {images: train/images, masks: train/masks}\n"
                           "  val: {images: val/images, masks: val/masks}\n")  # fmt: skip
    return description


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(("split", "overrides", "said"), [
    ("train", ["--data.batch_size=4"], "set data.crop_size: [H, W] to train on crops of one size, or data.batch_size: 1"),
    ("val", ["--data.batch_size=1", "--data.val_batch_size=2"], "set data.val_batch_size: 1 (validation scores whole images)"),
])
def test_images_of_mixed_sizes_without_crops_are_one_line(recipe, tmp_path, capsys, workers, split, overrides, said):
    description = mixed_size_dataset(tmp_path / "data")
    code = main(["train", str(recipe), f"--out={tmp_path / 'run'}", f"--data.dataset={description}", "--data.options={}",
                 f"--data.workers={workers}", "--epochs=1", *overrides, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err == f"semseg train: error: the images of one batch differ in size (64x40, 48x48): {said}"


def test_resume_compares_the_recipe_as_the_checkpoint_stored_it(recipe, tmp_path):
    """JSON turns int keys into strings and tuples into lists: an unchanged recipe must still resume."""
    from semseg.engine.trainer import _recipe_changes, fit

    mixed_size_dataset(tmp_path / "data")
    out = tmp_path / "run"
    overrides = [f"out={out}", "data.dataset=folder", f"data.root={tmp_path / 'data'}", "data.crop_size=[32, 32]",
                 "data.options={classes: 2, value_map: {0: 0, 1: 1, 255: 255}}", "data.batch_size=2", "epochs=2"]  # fmt: skip
    config = load_config(recipe, overrides)
    config.data.crop_size = (32, 32)  # as a Python caller may build it
    fit(config, stop_after=1, progress=False)
    assert fit(config, resume=True, progress=False)["epochs_run"] == 1
    stored = {"model": {"name": "lraspp", "options": {"backbone_weights": "/old/place/mnv3.pth"}}}
    moved = {"model": {"name": "lraspp", "options": {"backbone_weights": "/new/place/mnv3.pth"}}}
    assert _recipe_changes(stored, moved) == []  # a weight file only initialises; resuming loads the run's own
    assert _recipe_changes({"amp": "bf16"}, {"amp": "none"}) == []  # a CPU without bf16 continues the run


def test_resume_refuses_before_decoding_the_data(recipe, tmp_path, monkeypatch):
    from semseg.engine import trainer

    out = tmp_path / "run"
    trainer.fit(load_config(recipe, [f"out={out}", "epochs=2"]), stop_after=1, progress=False)
    monkeypatch.setattr(trainer, "build_datasets", lambda config: pytest.fail("the data were built first"))
    with pytest.raises(ConfigError, match=r"optim\.lr \(0\.05 -> 0\.1\)"):
        trainer.fit(load_config(recipe, [f"out={out}", "epochs=2", "optim.lr=0.1"]), resume=True, progress=False)


def test_a_mistyped_resume_folder_is_not_created(recipe, tmp_path, capsys):
    out = tmp_path / "typo" / "run"
    assert main(["train", str(recipe), f"--out={out}", "--resume", "--quiet"]) == 1
    assert "cannot resume" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_a_full_disk_while_saving_is_one_line_and_the_run_resumes(recipe, tmp_path, monkeypatch, capsys):
    # torch.save on a full disk raises RuntimeError("basic_ios::clear: iostream error"): a traceback
    # from deep inside torch, seen when /tmp filled up under a long run.
    import shutil

    from semseg.engine import checkpoint

    out = tmp_path / "run"
    assert main(["train", str(recipe), f"--out={out}", "--epochs=1", "--quiet"]) == 0

    def full(state, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: usage._replace(free=1_200_000))
    assert main(["train", str(recipe), f"--out={out}", "--epochs=2", "--resume", "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"semseg train: error: no space left on the disk that holds {out} (1 MB free); free some space and run the "
        "command again (a training run: --resume continues from its last saved epoch)")  # fmt: skip
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # the partial file is gone
    monkeypatch.undo()
    assert main(["train", str(recipe), f"--out={out}", "--epochs=2", "--resume", "--quiet"]) == 0
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_a_write_that_fails_with_space_left_keeps_its_own_error(tmp_path, monkeypatch):
    from semseg.engine.checkpoint import save_training_state

    def broken(state, path, *args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="some other failure"):  # not put down to the disk: there is room
        save_training_state(tmp_path / "s.pt", {"x": 1})
    assert list(tmp_path.iterdir()) == []
