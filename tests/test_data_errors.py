"""Bad dataset files stop training and evaluation with one line naming the file, also from loader workers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from semseg.cli import main
from semseg.data import DataError, FolderDataset

RECIPE = """
model:
  name: unet
  options: {{base_channels: 4, depth: 2}}
data:
  dataset: {root}/data.yaml
  crop_size: [32, 32]
  batch_size: 2
  workers: {workers}
epochs: 1
out: {out}
"""


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (tmp_path / "data" / split / sub).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / split / "images" / f"{i}.png")
            Image.fromarray((rng.random((40, 40)) > 0.5).astype(np.uint8)).save(tmp_path / "data" / split / "masks" / f"{i}.png")
    (tmp_path / "data" / "data.yaml").write_text(
        "name: noise\nclasses: [a, b]\nmask_format: index\n"
        "splits:\n  train: {images: train/images, masks: train/masks}\n  val: {images: val/images, masks: val/masks}\n"
    )
    return tmp_path / "data"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_is_one_line_naming_it(folder, tmp_path, capsys, workers):
    bad = folder / "train" / "images" / "2.png"
    truncate(bad)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=folder, workers=workers, out=tmp_path / "run"))
    assert main(["train", str(recipe), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert str(bad) in err and "cannot read this image" in err and "semseg data check" in err
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_unmapped_mask_values_from_a_worker_are_one_line_with_a_correct_value_map(folder, tmp_path, capsys):
    bad = folder / "train" / "masks" / "1.png"
    Image.fromarray(np.full((40, 40), 7, dtype=np.uint8)).save(bad)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=folder, workers=1, out=tmp_path / "run"))
    assert main(["train", str(recipe), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "mask values 7 are not mapped" in err
    # The suggested value_map keeps every known value and sends the new one to ignore_index.
    assert "value_map: {0: 0, 1: 1, 255: 255, 7: 255}" in err
    fixed = FolderDataset(folder / "train", classes=2, value_map={0: 0, 1: 1, 255: 255, 7: 255})
    assert (fixed.raw(1)[1] == 255).all()


def test_a_truncated_mask_in_evaluation_is_one_line(folder, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=folder, workers=0, out=tmp_path / "run"))
    assert main(["train", str(recipe), "--quiet"]) == 0
    capsys.readouterr()
    bad = folder / "val" / "masks" / "3.png"
    truncate(bad)
    args = ["evaluate", str(tmp_path / "run" / "last.safetensors"), "--data", str(folder / "data.yaml"),
            "--backend", "torch", "--quiet"]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and str(bad) in err and "cannot read this mask" in err


def test_data_error_keeps_only_the_original_line_when_pytorch_rewraps_it():
    wrapped = ("Caught DataError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nsemseg.data.base.DataError: /d/a.png: cannot read this image (x)\n')
    assert str(DataError(wrapped)) == "/d/a.png: cannot read this image (x)"

