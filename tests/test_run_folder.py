"""A run folder survives a kill at any point of an epoch's commit, and runs never mix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from semseg.cli import main
from semseg.config import load_config
from semseg.engine import run_folder
from semseg.engine.checkpoint import read_metadata
from semseg.engine.trainer import fit

RECIPE = """
model:
  name: unet
  options: {base_channels: 4, depth: 2}
data:
  dataset: shapes
  options: {train_size: 16, val_size: 4, size: 32}
  batch_size: 8
  workers: 0
optim: {name: sgd, lr: 0.05}
epochs: 3
"""


class Killed(BaseException):
    """Stands in for kill -9: nothing after the crash point runs (it is not an Exception)."""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Weights of the uninterrupted run, for comparison."""
    tmp = tmp_path_factory.mktemp("straight")
    (tmp / "recipe.yaml").write_text(RECIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests themselves run (conftest): the same summation order
    try:
        fit(load_config(tmp / "recipe.yaml", [f"out={tmp / 'run'}"]), progress=False)
    finally:
        torch.set_num_threads(threads)
    return load_file(str(tmp / "run" / "last.safetensors"))


def logged_epochs(out):
    return [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]


def crash_on(monkeypatch, name, nth):
    """Make ``run_folder.<name>`` kill the run on its ``nth`` call (counting from 1).

    For ``replace`` (os.replace, shared with every atomic write) only the renames of
    ``next.state.pt`` over ``last.state.pt`` count: the second rename of a commit.
    """
    target = run_folder.os if name == "replace" else run_folder
    original = getattr(target, name)
    calls = []

    def wrapper(*args, **kwargs):
        if name != "replace" or str(args[0]).endswith(run_folder.NEXT_STATE):
            calls.append(args)
        if len(calls) == nth:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


# Per epoch: save_training_state(next) once; save_weights next, then best (when best); two renames.
# Epoch 1 is always the best so far, so epoch 2's calls are: state #2, weights #3, its state rename #2,
# then best #4 if epoch 2 is the best (else #4 is epoch 3's next weights: a kill point just the same).
KILL_POINTS = {
    "after the log line, while writing the state": ("save_training_state", 2),
    "between the state and the weights": ("save_weights", 3),
    "between the two renames": ("replace", 2),
    "after the commit, before best is written": ("save_weights", 4),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_at_any_point_of_the_commit_resumes_exactly(recipe, tmp_path, monkeypatch, straight, point):
    out = tmp_path / "run"
    config = load_config(recipe, [f"out={out}"])
    with monkeypatch.context() as patch:
        crash_on(patch, *KILL_POINTS[point])
        with pytest.raises(Killed):
            fit(config, progress=False)
    (out / ".last.safetensors.abc123.tmp").write_bytes(b"half a file")  # what a real kill leaves behind
    fit(config, resume=True, progress=False)
    resumed = load_file(str(out / "last.safetensors"))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert logged_epochs(out) == [1, 2, 3]
    assert not list(out.glob("next.*")) and not list(out.glob(".*.tmp"))
    history = torch.load(out / "last.state.pt", weights_only=True)["history"]
    best_epoch = max(history, key=lambda h: h["val_mIoU"])["epoch"]
    assert read_metadata(out / "best.safetensors")["epoch"] == best_epoch


def test_a_kill_while_the_log_line_is_appended_resumes_exactly(recipe, tmp_path, monkeypatch, straight):
    out = tmp_path / "run"
    config = load_config(recipe, [f"out={out}"])
    with monkeypatch.context() as patch:
        crash_on(patch, *KILL_POINTS["after the log line, while writing the state"])
        with pytest.raises(Killed):
            fit(config, progress=False)
    log = (out / "log.jsonl").read_text()
    (out / "log.jsonl").write_text(log[: len(log) - len(log.splitlines()[-1]) // 2 - 1])  # epoch 2's line cut in half
    fit(config, resume=True, progress=False)
    resumed = load_file(str(out / "last.safetensors"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert logged_epochs(out) == [1, 2, 3]


def test_resume_refuses_a_log_unreadable_before_its_last_line(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    fit(load_config(recipe, [f"out={out}", "epochs=2"]), progress=False)
    lines = (out / "log.jsonl").read_text().splitlines()
    (out / "log.jsonl").write_text("\n".join(["{oops", *lines]) + "\n")
    assert main(["train", str(recipe), f"--out={out}", "--epochs=3", "--resume", "--quiet"]) == 1
    assert f"{out / 'log.jsonl'}, line 1: not a JSON record ('{{oops'); repair or delete that line" in capsys.readouterr().err


def test_recover_rolls_a_complete_new_pair_forward_and_drops_an_incomplete_one(recipe, tmp_path):
    out = tmp_path / "run"
    fit(load_config(recipe, [f"out={out}", "epochs=2"]), progress=False)
    state = torch.load(out / "last.state.pt", weights_only=True)
    # Incomplete: a newer state without its weights. The old pair stands.
    torch.save({**state, "epoch": 3}, out / "next.state.pt")
    run_folder.recover(out)
    assert not (out / "next.state.pt").exists()
    assert read_metadata(out / "last.safetensors")["epoch"] == 2


def test_a_fresh_run_refuses_a_folder_holding_a_run(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    config = load_config(recipe, [f"out={out}", "epochs=1"])
    fit(config, progress=False)
    before = (out / "best.safetensors").read_bytes()
    with pytest.raises(run_folder.RunFolderError, match="already holds a run .*pass --resume to continue it, --overwrite"):
        fit(config, progress=False)
    assert (out / "best.safetensors").read_bytes() == before and logged_epochs(out) == [1]
    assert main(["train", str(recipe), f"--out={out}", "--epochs=1", "--quiet"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert main(["train", str(recipe), f"--out={out}", "--epochs=1", "--quiet", "--overwrite"]) == 0
    assert logged_epochs(out) == [1] and (out / "notes.txt").read_text() == "mine"


def test_quiet_training_prints_one_line_per_epoch(recipe, tmp_path, capsys):
    assert main(["train", str(recipe), f"--out={tmp_path / 'q'}", "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
