import os
import stat

import pytest
import torch

import semseg
from semseg.engine.checkpoint import load_model, read_metadata, save_weights


def test_round_trip_rebuilds_model_and_metadata(tmp_path):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    path = save_weights(model, tmp_path / "m.safetensors", classes=["a", "b", "c"], palette=[[0, 0, 0]] * 3)
    clone, meta = load_model(path)
    clone.eval()
    assert meta["classes"] == ["a", "b", "c"]
    assert meta["model_config"]["base_channels"] == 4
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(model(x), clone(x))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_checkpoint_gets_the_permissions_of_an_ordinary_file(tmp_path, umask):
    model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=1)
    previous = os.umask(umask)
    try:
        path = save_weights(model, tmp_path / "m.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=1)
    path = save_weights(model, tmp_path / "m.safetensors", classes=["a", "b"])
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("semseg.engine.checkpoint.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        save_weights(model, path, classes=["x", "y"])
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_model_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="build it with semseg.create_model"):
        save_weights(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_foreign_safetensors_file_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a semseg weight file"):
        read_metadata(tmp_path / "other.safetensors")


def test_a_file_that_is_not_safetensors_is_named(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("just text")
    with pytest.raises(ValueError, match="notes.safetensors is not a readable safetensors file"):
        read_metadata(path)


def test_a_bisenetv2_checkpoint_from_before_the_four_boosters_still_loads(tmp_path):
    """Files written before ``aux_boosters`` existed hold one booster and no such option: rebuilt as saved."""
    import json

    from safetensors.torch import load_file, save_file

    model = semseg.create_model("bisenetv2", num_classes=3, aux_boosters="s5")
    path = save_weights(model, tmp_path / "old.safetensors", classes=["a", "b", "c"], palette=[[0, 0, 0]] * 3,
                        mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    config = json.loads(header["model_config"])
    del config["aux_boosters"]
    save_file(load_file(str(path)), str(path), metadata={**header, "model_config": json.dumps(config)})
    loaded, _ = load_model(path)
    assert not len(loaded.boosters) and loaded.booster is not None
    assert set(loaded.aux_weights) == {"aux"}
